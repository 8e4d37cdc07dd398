"""coordinator/sessions.py: when a node counts as online.

A node is online once its facts arrived (the session's first heartbeat), never merely
because its link came up: the link reconciles first, and until the heartbeat is in,
`flota nodes` would show it online with no facts (or with the last session's) and the
scheduler could consider it. The real link delivers "up" first, then the heartbeat.
"""

from __future__ import annotations

from tests.coordinator.fakes import Harness, heartbeat, idle, make_run, started, until


def test_a_new_node_is_online_only_once_its_first_heartbeat_arrived(h: Harness) -> None:
    async def scenario() -> None:
        h.enroll("nA", "node-a")
        h.rec.sessions.enrolled("nA", "node-a", "fp-nA")
        h.rec.dispatch.link("nA")
        h.rec.submit(make_run())

        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        entry = h.rec.fleet["nA"]
        assert (entry.state, entry.info, entry.schedulable) == ("unknown", None, False)
        assert entry.shown_state == "unknown"  # what `flota nodes` shows
        h.step()
        await idle()
        assert h.links["nA"].starts == []  # nothing placed on a node without facts

        h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        assert entry.state == "online" and entry.info is not None and entry.info.facts.cpu_count == 2
        h.step()
        await until(lambda: h.links["nA"].starts, "StartJob once the facts are in")

    h.run(scenario)


def test_a_reconnected_node_waits_for_fresh_facts(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        link.connected = False
        await h.rec.sessions.on_link_state("nA", "down", "Socket closed")
        assert h.rec.fleet["nA"].state == "unreachable"

        link.connected = True
        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        assert link.lists == 1  # reconciled at once
        assert h.rec.fleet["nA"].state == "unreachable"  # the last session's facts do not count

        h.rec.sessions.on_event("nA", heartbeat("nA", "node-a", slots=4))
        entry = h.rec.fleet["nA"]
        assert entry.state == "online" and entry.info is not None and entry.info.slots == 4

    h.run(scenario)


def test_a_lost_node_that_comes_back_is_reconciled_once(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        h.step()
        await until(lambda: link.starts, "StartJob")
        await idle()
        h.rec.sessions.on_event("nA", started(job.id, job.attempts[0].id))
        link.connected = False
        await h.rec.sessions.on_link_state("nA", "down", "Socket closed")
        h.clock.advance(h.config.lost_after_s + 1)
        h.step()
        assert h.rec.fleet["nA"].state == "lost"

        link.connected = True
        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        assert h.rec.fleet["nA"].state == "lost"
        h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        assert h.rec.fleet["nA"].state == "online"
        await idle()
        assert link.lists == 1  # the link's reconcile; the heartbeat does not start another

    h.run(scenario)
