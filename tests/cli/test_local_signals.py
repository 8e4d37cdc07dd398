"""A foreground `flota up --local N` owns its fleet: every way it ends stops every daemon
and waits for it (a closed terminal, a process manager's SIGTERM, Ctrl-C, being killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from tests.fleet import Fleet, wait_until


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Up:
    """`flota up --local N` in the foreground, in a session of its own as a shell's job is."""

    def __init__(self, fleet: Fleet, count: int) -> None:
        self.proc = subprocess.Popen(
            [fleet.python, "-m", "cli", "up", "--local", str(count)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=fleet.env,
            cwd=fleet.home,
            start_new_session=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: self.proc.poll() is not None or "press Ctrl-C" in "".join(self.stderr), 120, "up")
        assert self.proc.poll() is None, "".join(self.stderr)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def daemons(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def _reap(up: _Up, daemons: list[psutil.Process]) -> None:
    """After a failure, leave nothing running for the next test."""
    if up.proc.poll() is None:
        daemons = daemons + up.daemons()
        up.proc.kill()
        up.proc.wait(10)
    for proc in daemons:
        if _alive(proc):
            proc.kill()


def _start(tmp_path: Path, count: int = 1) -> tuple[Fleet, _Up, list[psutil.Process]]:
    fleet = Fleet(tmp_path / "home")
    up = _Up(fleet, count)
    daemons = up.daemons()
    cmdlines = [" ".join(p.cmdline()) for p in daemons]
    assert sum("coordinator start" in c for c in cmdlines) == 1, cmdlines
    assert sum("node_agent start" in c for c in cmdlines) == count, cmdlines
    return fleet, up, daemons


def _assert_all_gone(up: _Up, daemons: list[psutil.Process], children: list[psutil.Process]) -> None:
    # `up` waited for its own children; what they started (a node's keeper, its jobs) follows shortly.
    assert [p for p in children if _alive(p)] == [], "".join(up.stderr)
    wait_until(lambda: not any(_alive(p) for p in daemons), 2.0, "every daemon of the fleet gone")


@pytest.mark.parametrize(
    ("sig", "to_group", "code"),
    [
        (signal.SIGINT, True, 0),  # Ctrl-C: the terminal signals the whole foreground group
        (signal.SIGHUP, True, 128 + signal.SIGHUP),  # the terminal was closed
        (signal.SIGTERM, False, 128 + signal.SIGTERM),  # a process manager, a CI timeout
    ],
    ids=["SIGINT", "SIGHUP", "SIGTERM"],
)
def test_a_signal_to_up_stops_its_fleet_and_waits_for_it(
    tmp_path: Path, sig: signal.Signals, to_group: bool, code: int
) -> None:
    fleet, up, daemons = _start(tmp_path, count=2)
    try:
        _signal_up(fleet, up, daemons, sig, to_group, code)
    finally:
        _reap(up, daemons)


def _signal_up(
    fleet: Fleet, up: _Up, daemons: list[psutil.Process], sig: signal.Signals, to_group: bool, code: int
) -> None:
    children = psutil.Process(up.proc.pid).children()
    # With a job running: its node's keeper and the job must go too.
    run = fleet.json("run", "sleep 300", check=True)
    wait_until(lambda: fleet.json("status", f"{run['id']}.1")["status"] == "running", 60, "job running")
    daemons += [p for p in up.daemons() if p not in daemons]
    assert any("sleep 300" in " ".join(p.cmdline()) for p in daemons)
    if to_group:
        os.killpg(up.proc.pid, sig)
    else:
        up.proc.send_signal(sig)
    assert up.proc.wait(60) == code, "".join(up.stderr)
    _assert_all_gone(up, daemons, children)
    assert not (fleet.home / "local" / "fleet.json").exists()


def test_up_killed_outright_still_takes_its_fleet_down(tmp_path: Path) -> None:
    fleet, up, daemons = _start(tmp_path)
    up.proc.kill()  # nothing of `up` runs: the daemons learn it from the kernel
    up.proc.wait(10)
    try:
        wait_until(lambda: not any(_alive(p) for p in daemons), 30.0, "every daemon of the fleet gone")
    finally:
        _reap(up, daemons)
    # And the next `up` on the same home starts (nothing left holds its state).
    again = fleet.flota("up", "--local", "1", "--detach", timeout=120)
    try:
        assert again.returncode == 0, again.stderr
    finally:
        fleet.flota("down")


def test_a_second_ctrl_c_does_not_cut_the_stop_short(tmp_path: Path) -> None:
    fleet, up, daemons = _start(tmp_path, count=2)
    try:
        children = psutil.Process(up.proc.pid).children()
        nodes = [p for p in children if "node_agent start" in " ".join(p.cmdline())]
        os.killpg(up.proc.pid, signal.SIGINT)
        wait_until(lambda: any(not _alive(p) for p in nodes), 30, "the stop under way")
        os.killpg(up.proc.pid, signal.SIGINT)  # the impatient user presses Ctrl-C again
        assert up.proc.wait(60) == 0, "".join(up.stderr)
        _assert_all_gone(up, daemons, children)
    finally:
        _reap(up, daemons)


def test_a_daemon_that_dies_takes_the_rest_of_the_fleet_down_with_up(tmp_path: Path) -> None:
    fleet, up, daemons = _start(tmp_path, count=2)
    try:
        children = psutil.Process(up.proc.pid).children()
        coordinator = next(p for p in children if "coordinator start" in " ".join(p.cmdline()))
        coordinator.kill()
        assert up.proc.wait(60) == 3, "".join(up.stderr)
        assert "a daemon of the local fleet exited; stopping the rest" in "".join(up.stderr)
        _assert_all_gone(up, daemons, children)
        assert not (fleet.home / "local" / "fleet.json").exists()
    finally:
        _reap(up, daemons)
