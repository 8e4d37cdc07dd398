"""The daemon's side of a job's metering proxy: start it, tell the job where it is, read
its figures, stop it.

The proxy is a process of its own (``python -m node_agent.meter``), in a session of its
own so that it outlives a daemon restart like the job does; its figures file
(``meter.json`` in the attempt's journal directory) says its pid, port and counts, so a
restarted daemon finds it again. What the job is told (:meth:`Meter.env`) replaces every
provider key the job would otherwise have seen: the proxy holds the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from node_agent.errors import SpawnError
from node_agent.models import Job, Metered
from node_agent.process import JobProcess, attach

__all__ = ["KEY_VARIABLES", "Meter", "find", "for_agent", "job_env", "metered", "read", "split_keys", "start"]

STATE_FILE = "meter.json"
LOG_FILE = "meter.log"
OPENAI_DEFAULT = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT = "https://api.anthropic.com"
_START_S = 30.0
_STOP_S = 5.0
DOWN = (
    "the job's metering proxy stopped; the job was failed rather than let it reach its "
    "provider unmetered (it only knew the proxy's address and token)"
)
# Provider keys a metered job never sees: the proxy takes the first two (Anthropic's
# bearer token as its key); the others (Gemini's) have no route through it.
KEY_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
)


def metered(job: Job) -> bool:
    """A job with a budget reaches its provider only through a metering proxy."""
    return job.budget_usd > 0


def anthropic_model(model: str) -> bool:
    return model.startswith("anthropic/")


@dataclass
class Meter:
    """One job's proxy while it runs."""

    process: JobProcess
    port: int
    token: str
    state: Path
    popen: subprocess.Popen[bytes] | None = None  # None: started by an earlier daemon
    stopping: bool = False  # we stop it: its end is no failure

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables each agent CLI honours, pointing at the proxy, with the job's token."""
        return {
            "OPENAI_BASE_URL": self.openai_url,
            "OPENAI_API_BASE": self.openai_url,
            "OPENAI_API_KEY": self.token,
            "ANTHROPIC_BASE_URL": self.anthropic_url,
            "ANTHROPIC_API_KEY": self.token,
            "FLOTA_METER_URL": self.anthropic_url,
        }

    def api_base(self, model: str) -> str:
        """The base URL the llm agent takes for ``model``."""
        return self.anthropic_url if anthropic_model(model) else self.openai_url

    def figures(self) -> Metered:
        return read(self.state)

    def alive(self) -> bool:
        return attach(self.process.pid, self.process.create_time) is not None

    async def wait(self) -> None:
        """Until the process has ended (reaped, when it is our child)."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.process.pid)
        except ProcessLookupError:
            fd = -1
        except OSError:  # no pidfd (an old kernel): poll
            while self.alive():
                await asyncio.sleep(0.2)
            fd = -1
        if fd >= 0:
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        if self.popen is not None:
            self.popen.poll()

    def down_line(self) -> str:
        """The failure line of a proxy that ended by itself; "" while it runs or we stopped it."""
        return "" if self.stopping or self.alive() else DOWN

    async def end(self) -> tuple[Metered, str]:
        """Stop it, wait for its last figures (a few seconds at most) and read them; and
        the failure line of a proxy that had ended by itself ("" if not)."""
        down = self.down_line()
        self.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), _STOP_S)
        return self.figures(), down

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.alive():
                os.kill(self.process.pid, signal.SIGTERM)
        if self.popen is not None:
            self.popen.poll()


def upstreams(job: Job, local_base: str) -> tuple[str, str]:
    """(OpenAI base, Anthropic base) the job's calls really go to: its API base (or this
    node's local server for its model), else each provider's own."""
    base = (job.api_base or local_base).rstrip("/")
    if not base:
        return OPENAI_DEFAULT, ANTHROPIC_DEFAULT
    return base, base.removesuffix("/v1")


async def start(job: Job, journal_dir: Path, env: Mapping[str, str], local_base: str = "") -> Meter:
    """Start the job's proxy; ``env`` is where its keys are read (the job's environment as
    it would have been: secrets, the job's variables, the daemon's). Raises SpawnError."""
    openai_base, anthropic_base = upstreams(job, local_base)
    token = f"flota-meter-{secrets.token_urlsafe(24)}"
    state = journal_dir / STATE_FILE
    settings = {
        "openai_base": openai_base,
        "anthropic_base": anthropic_base,
        "openai_key": env.get("OPENAI_API_KEY", ""),
        "anthropic_key": env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN", ""),
        "token": token,
        "budget_usd": job.budget_usd,
        "state": str(state),
    }
    child_env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    child_env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    here = str(Path(__file__).resolve().parents[2])  # where node_agent is imported from, for -m
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return await asyncio.to_thread(_launch, settings, child_env, journal_dir, token, state)


def _launch(
    settings: Mapping[str, object], env: dict[str, str], journal_dir: Path, token: str, state: Path
) -> Meter:
    """Start the process, hand it its settings, wait for its port (a thread's work)."""
    try:
        with open(journal_dir / LOG_FILE, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "node_agent.meter"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,  # its own session: it outlives a daemon restart, as the job does
            )
    except OSError as exc:
        raise SpawnError(f"cannot start the metering proxy: {exc.strerror or exc}") from exc
    assert popen.stdin is not None and popen.stdout is not None
    line = b""
    try:
        popen.stdin.write(json.dumps(settings).encode() + b"\n")
        popen.stdin.close()
        if select.select([popen.stdout], [], [], _START_S)[0]:
            line = popen.stdout.readline()
    except OSError:
        pass
    popen.stdout.close()
    try:
        create_time = psutil.Process(popen.pid).create_time() if line.strip().isdigit() else 0.0
    except psutil.Error:
        create_time = 0.0
    if not create_time:
        popen.kill()
        popen.wait()
        tail = (journal_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-1:]
        raise SpawnError(f"cannot start the metering proxy: {tail[0] if tail else 'it did not say its port'}")
    return Meter(JobProcess(popen.pid, create_time), int(line), token, state, popen)


def read(state: Path) -> Metered:
    """The figures in a proxy's state file (zeros if it cannot be read)."""
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}

    def num(key: str) -> float:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) and value >= 0 else 0.0

    return Metered(
        calls=int(num("calls")),
        refused=int(num("refused")),
        tokens_in=int(num("tokens_in")),
        tokens_out=int(num("tokens_out")),
        cost_usd=num("cost_usd"),
        priced=bool(data.get("priced", True)),
        note=str(data.get("note") or ""),
        budget_usd=num("budget_usd"),
        refusal=str(data.get("refusal") or ""),
    )


def find(journal_dir: Path) -> Meter | None:
    """The proxy a previous daemon started for this attempt, if it still runs."""
    state = journal_dir / STATE_FILE
    try:
        data = json.loads(state.read_text())
        pid, create_time, port = int(data["pid"]), float(data["create_time"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    process = attach(pid, create_time)
    return Meter(process, port, "", state) if process is not None else None


def split_keys(job: Job) -> tuple[Job, dict[str, str]]:
    """A metered job's provider keys out of its variables (to be held like secrets: in
    memory, never journaled), and the job without them."""
    keys = {k: v for k, v in job.env.items() if k in KEY_VARIABLES}
    if not keys:
        return job, {}
    return replace(job, env={k: v for k, v in job.env.items() if k not in keys}), keys


def job_env(env: Mapping[str, str], meter: Meter) -> dict[str, str]:
    """The job's environment with no provider key in it, and the proxy's address and token."""
    return {**{k: v for k, v in env.items() if k not in KEY_VARIABLES}, **meter.env()}


def for_agent(job: Job, meter: Meter) -> Job:
    """The job as its agent is started: its API base the proxy, and no budget of its own
    (the proxy keeps it: an llm agent learns of it from the proxy's refusal). A command
    line or variable that names the job's API base (an agent CLI's template filled in with
    ``--api-base``) names the proxy instead."""
    base = job.api_base.rstrip("/")
    proxy = meter.openai_url if base.endswith("/v1") else meter.anthropic_url

    def routed(text: str) -> str:
        return text.replace(base, proxy) if base else text

    return replace(
        job,
        api_base=meter.api_base(job.model),
        budget_usd=0.0,
        command=routed(job.command),
        env={k: routed(v) for k, v in job.env.items()},
    )
