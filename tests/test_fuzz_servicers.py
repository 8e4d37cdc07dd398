"""Fuzzing the servicers of real daemons (DESIGN.md rule 8): malformed protobuf and
hostile field values are refused with a clean status (INVALID_ARGUMENT for malformed
input, NOT_FOUND for a well-formed id that does not exist, PERMISSION_DENIED for the
wrong role), never UNKNOWN or INTERNAL, never a hang, never a traceback in the log.

One coordinator and one node daemon run as processes for the whole module. Requests
go out as raw bytes through generic channels, so that bodies which do not decode reach
the servers. Nothing here sends traffic beyond loopback: every URL and address the
daemons may dial is a loopback one or one they must refuse, and every command a node
may run is harmless. Runs the fuzzing accepts stay queued (they require a label no
node has) and are cancelled at once.

Every test sends fixed tables of hostile values first (each value alone), then random
combinations drawn by hypothesis (derandomized: the same examples in every run). It
collects what it finds and fails at its end with one line per finding (RPC, kind of
input, status got and wanted) and the smallest example, so one bug hides no other.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from coordinator.pki import CertificateAuthority
from node_agent.servicer import validate_spec
from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME, node_server_name
from protos.flota.v1 import coordinator_pb2, node_pb2, types_pb2
from protos.limits import (
    ENV_KEY_RE,
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    MAX_INPUT,
    MAX_JOBS,
    NAME_RE,
    NODE_ID_RE,
    PROFILE_RE,
)
from tests.fleet import Fleet, git, make_repo, wait_until

S = grpc.StatusCode
OK, INVALID, NOT_FOUND, DENIED, PRECONDITION = (
    S.OK,
    S.INVALID_ARGUMENT,
    S.NOT_FOUND,
    S.PERMISSION_DENIED,
    S.FAILED_PRECONDITION,
)
CLEAN = frozenset({OK, INVALID, NOT_FOUND, DENIED, PRECONDITION, S.ALREADY_EXISTS})

UNARY_DEADLINE_S = 10.0
STREAM_DEADLINE_S = 5.0
MAX_HANGS = 3  # then the test stops: each hang costs a deadline

# FLOTA_FUZZ_SCALE multiplies the random examples (4 for a nightly run); 0 keeps only the
# fixed tables, which every test sends first.
SCALE = float(os.environ.get("FLOTA_FUZZ_SCALE", "1"))

FUZZ = settings(
    derandomize=True,  # the same examples in every run: CI is reproducible
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # nothing fails inside: findings are collected
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def fuzzing(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, round(max_examples * SCALE)))


def run(fuzz: Callable[[], None]) -> None:
    if SCALE > 0:
        fuzz()


# The label every fuzzed run requires and no node has: accepted runs are never placed.
NEVER = {"flota-fuzz": "never"}
# What a node may be asked to run: harmless, whatever the other fields say.
SAFE_COMMANDS = [
    "true",
    ":",
    "exit 0",
    "exit 3",
    "echo fuzz",
    "echo 'ünï 💥 \\ \" $x'",
    "true #" + "x" * 60_000,
]
SECRET = "FUZZ_SECRET"
# Environment keys a job's shell acts on; a fuzzed value there is not what we test.
SHELL_KEYS = {
    "BASH_ENV",
    "ENV",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# A model as the coordinator takes it (a litellm model string, e.g. openai/gpt-4o).
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# --- value pools ------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "\t\n",
    "\0",
    "a\0b",
    ".",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "line\nbreak",
    "cr\rlf",
    "\x1b[2J\x1b[31mred",
    "\x7f",
    "ü",
    "日本語",
    "💥",
    "\u202eevil",
    "\ufeffbom",
    "%s%n%x",
    "$(id)",
    "`id`",
    "${IFS}",
    "' OR 1=1 --",
    "x" * 201,
    "x" * 100_000,
    "🦀" * 5000,
]
BAD_IDS = [
    "",
    ".",
    "..",
    "a..b",
    "../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "\0",
    "a\0b",
    "r1\n",
    "\n",
    " ",
    "a b",
    "-rf",
    ".hidden",
    "x" * 101,
    "x" * 100_000,
    "ü",
    "💥",
    "r1;rm -rf /",
    "' OR 1=1 --",
    "%s%n",
    "${HOME}",
    "*",
    "r1*",
    "\u202er1",
]
GOOD_IDS = ["r000000", "r000000.1", "r000000.1.a1", "zzz", "A-b_c.9", "x" * 100, "0"]
BAD_NODE_NAMES = ["", "alpha\n", "../alpha", "\0", "al pha", "-alpha", "x" * 1000, "ü", "ALPHA*"]
SAFE_URLS = [  # the node may try them: all local or loopback, all fail fast
    "/nonexistent/repo.git",
    "/etc",
    "file:///etc",
    "file:///nonexistent/x.git",
    "https://127.0.0.1:9/x.git",
    "http://[::1]:9/x.git",
    "ssh://git@127.0.0.1:9/x.git",
    "git://127.0.0.1:9/x.git",
    "git+ssh://127.0.0.1:9/x.git",
    "git@127.0.0.1:x.git",
]
BAD_URLS = [
    "",
    "-upload-pack=touch /tmp/flota-fuzz-pwned",
    "--upload-pack=touch /tmp/flota-fuzz-pwned",
    "ext::sh -c touch% /tmp/flota-fuzz-pwned",
    "fd::17",
    "foo://127.0.0.1/x",
    "relative/path.git",
    "./x.git",
    "/x\0y",
    "/x\ny",
    "file:///x\r",
    ":path",
    "/" + "x" * 5000,
]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD_COMMITS = [COMMIT, "a" * 64]
BAD_COMMITS = [
    "",
    "HEAD",
    COMMIT[:39],
    COMMIT + "a",
    COMMIT.upper(),
    "g" * 40,
    COMMIT + "\n",
    "-" + COMMIT[1:],
]
GOOD_REFS = ["", "refs/flota/base/r1", "refs/heads/main", "refs/tags/v1.0"]
BAD_REFS = [
    "main",
    "--force",
    "refs/",
    "refs//x",
    "refs/heads/.x",
    "refs/heads/x.lock",
    "refs/heads/x.",
    "refs/heads/a..b",
    "refs/heads/../../config",
    "refs/heads/a b",
    "refs/heads/a:b",
    "refs/heads/a\n",
    "refs/" + "a" * 201,
]
GOOD_BRANCHES = ["flota/r1/0", "flota/run-1/job.0/attempt_2", "flota/" + "a" * 200]
BAD_BRANCHES = [
    "",
    "main",
    "flota/",
    "flota//x",
    "flota/x/",
    "flota/.x",
    "flota/x.lock",
    "flota/x.",
    "flota/../main",
    "flota/a..b",
    "flota/a b",
    "flota/a:main",
    "flota/a~1",
    "flota/a\n",
    "refs/heads/flota/x",
    "flota/" + "a" * 201,
]
GOOD_ENV_KEYS = ["A", "_X", "A_B_9", "A" * 128, "FLOTA_JOB_ID"]
BAD_ENV_KEYS = ["", "1A", "A-B", "A=B", "A B", "A\n", "A\0", "A" * 129, "ü", "$A"]
FLOATS = [0.0, -0.0, 1.0, 9.99, 10.0, 604800.0, 604800.5, -1.0, 1e308, -1e308, 5e-324]
FLOATS += [math.nan, math.inf, -math.inf]
INT32 = [0, 1, -1, -2, 10, 11, 64, 65, 4096, 2**31 - 1, -(2**31)]
INT64 = [0, 1, -1, 2**24, 2**24 + 1, 2**63 - 1, -(2**63)]
GOOD_PROFILES = ["home", "lan", "a.b_c-d", "x" * 32]
BAD_PROFILES = ["", "HOME", "a b", "x" * 33, "ü", "lan\n", "\0"]
GOOD_LABEL_KEYS = ["gpu", "a/b", "x.y_z-1", "k" * 63]
BAD_LABEL_KEYS = ["", "-a", "a b", "a=b", "k" * 64, "ü", "a\n", "\0"]
GOOD_LABEL_VALUES = ["", "1", "a:b/c", "v" * 63]
BAD_LABEL_VALUES = ["a b", "v" * 64, "ü", "a\n", "\0", "="]
ADDRESSES_OK = ["127.0.0.1:1", "127.0.0.1:65535", "[::1]:9", "[::ffff:127.0.0.1]:9", "127.0.0.1:١٢"]
# Refused by the coordinator's address check whatever resolves: never dialed, never looked up.
ADDRESSES_BAD = [
    "",
    ":",
    "127.0.0.1",
    "127.0.0.1:",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "127.0.0.1:99999999999999999999",
    "127.0.0.1:x",
    "127.0.0.1:1\n",
    "127.0.0.1:²",
    "[::1]:x",
    "a b:1",
    "ü:1",
    "-x:1",
    "..:1",
    "\0:1",
    "x" * 70 + ":1",
]


def text_values(pool: list[str] = HOSTILE_TEXT, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(pool), st.text(st.characters(codec="utf-8"), max_size=max_size))


def ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(BAD_IDS + GOOD_IDS),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
        st.text(st.characters(codec="utf-8"), max_size=20),
    )


def well_formed_id(value: str) -> bool:
    return bool(_ID.match(value)) and ".." not in value


def node_ref_ok(value: str) -> bool:
    return bool(NAME_RE.match(value) or NODE_ID_RE.match(value))


def kind(value: str) -> str:
    """A short class of a string value, for grouping findings."""
    if value == "":
        return "empty"
    if "\0" in value:
        return "NUL"
    if _CONTROL.search(value):
        return "control-char"
    if len(value) > 1000:
        return "huge"
    if ".." in value or value.startswith("/"):
        return "path"
    if not value.isascii():
        return "unicode"
    return "text"


def fkind(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if math.isinf(value) else "in-range" if value >= 0 else "neg"


def show(message: Message | bytes, limit: int = 400) -> str:
    if isinstance(message, bytes):
        text = repr(message[:120]) + (f"...<{len(message)} bytes>" if len(message) > 120 else "")
    else:
        text = " ".join(text_format.MessageToString(message, as_one_line=True).split())
    return text if len(text) <= limit else text[:limit] + f"...<{len(text)} chars>"


# --- daemons and calls ------------------------------------------------------------------


@dataclass
class Findings:
    """What went wrong, once per kind, with the smallest example of it."""

    seen: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    hangs: int = 0
    logs_from: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, example: str) -> None:
        if key not in self.seen or len(example) < len(self.seen[key]):
            self.seen[key] = example

    def report(self) -> str:
        return f"{len(self.seen)} finding(s) in {self.calls} calls:\n" + "\n".join(
            f"- {key}\n    e.g. {example}" for key, example in sorted(self.seen.items())
        )


@dataclass
class Daemons:
    fleet: Fleet
    admin: grpc.Channel  # admin certificate -> coordinator
    as_node: grpc.Channel  # ghost's node certificate -> coordinator
    node: grpc.Channel  # coordinator certificate -> alpha
    node_as_admin: grpc.Channel  # admin certificate -> alpha
    alpha_id: str
    ghost_id: str
    repo: Path
    remote: Path
    marker: Path  # what an injected command would create
    final_run: str = ""
    final_job: str = ""
    counter: int = 0

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def alive(self) -> None:
        for key in ("coordinator", "alpha"):
            proc = self.fleet.procs[key]
            assert proc.poll() is None, f"{key} died ({proc.returncode}):\n{self.fleet.log(key)[-3000:]}"

    def log_sizes(self) -> dict[str, int]:
        return {key: self.fleet.logs[key].stat().st_size for key in ("coordinator", "alpha")}

    def log_problems(self, since: dict[str, int] | None = None) -> list[str]:
        out = []
        for key in ("coordinator", "alpha"):
            with open(self.fleet.logs[key], "rb") as f:
                f.seek((since or {}).get(key, 0))
                text = f.read().decode(errors="replace")
            out += [
                f"{key}: {line[:300]}"
                for line in text.splitlines()
                if "Traceback" in line or "Exception" in line or "Unexpected [" in line
            ]
        return out

    def invoke(
        self, channel: grpc.Channel, path: str, body: bytes, stream: bool = False
    ) -> tuple[grpc.StatusCode, str, bytes]:
        received = 0
        try:
            if not stream:
                reply = channel.unary_unary(path)(body, timeout=UNARY_DEADLINE_S)
                return OK, "", reply
            call = channel.unary_stream(path)(body, timeout=STREAM_DEADLINE_S)
            for received, _ in enumerate(call, 1):
                if received > 200:  # a stream that goes on is not a failure: enough of it
                    call.cancel()
                    break
            return OK, "", b""
        except grpc.RpcError as exc:
            if exc.code() == S.DEADLINE_EXCEEDED and received:  # type: ignore[attr-defined]
                return OK, "", b""  # a live stream (StreamEvents) that had sent its state: not a hang
            return exc.code(), exc.details() or "", b""  # type: ignore[attr-defined]

    def check(
        self,
        findings: Findings,
        rpc: str,
        label: str | list[str],
        got: grpc.StatusCode,
        details: str,
        want: set[grpc.StatusCode] | frozenset[grpc.StatusCode],
        example: str,
    ) -> None:
        """Record a reply. ``label`` names the kind of input; a list names several hostile
        values at once: a request that was accepted anyway accepted each of them."""
        findings.calls += 1
        if got in want:
            return
        if got == S.UNAVAILABLE:
            self.alive()
        what = {S.UNKNOWN: "crash", S.INTERNAL: "crash", S.DEADLINE_EXCEEDED: "hang"}.get(got, "status")
        wanted = "/".join(sorted(c.name for c in want))
        labels = label if isinstance(label, list) and got == OK else [label]
        for one in labels:
            text = ", ".join(one) if isinstance(one, list) else one
            findings.add(
                f"{rpc} [{text}] {what}: got {got.name}, want {wanted}", f"{example} -> {details[:200]!r}"
            )
        if got == S.DEADLINE_EXCEEDED:
            findings.hangs += 1
            assert findings.hangs <= MAX_HANGS, findings.report()

    def coordinator(
        self, method: str, request: Message, channel: grpc.Channel | None = None
    ) -> tuple[grpc.StatusCode, str, bytes]:
        stream = COORDINATOR_METHODS[method][1]
        return self.invoke(
            channel or self.admin, f"/flota.v1.Coordinator/{method}", request.SerializeToString(), stream
        )

    def call_node(
        self, method: str, request: Message, channel: grpc.Channel | None = None
    ) -> tuple[grpc.StatusCode, str, bytes]:
        return self.invoke(channel or self.node, f"/flota.v1.Node/{method}", request.SerializeToString())

    def cancel_run(self, findings: Findings, reply: bytes, example: str) -> None:
        """An accepted run goes away at once (it could never be placed anyway)."""
        run = coordinator_pb2.Run.FromString(reply)
        got, details, _ = self.coordinator("Cancel", coordinator_pb2.CancelRequest(id=run.id))
        self.check(findings, "Cancel", "an accepted fuzzed run", got, details, {OK}, example)


def _creds(d: Path, key: str, cert: str, ca: str = "ca.pem") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (d / ca).read_bytes(), (d / key).read_bytes(), (d / cert).read_bytes()
    )


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    base = tmp_path_factory.mktemp("fuzz")
    fleet = Fleet(base / "home")
    channels: list[grpc.Channel] = []
    try:
        fleet.start_coordinator()
        fleet.start_node("alpha")
        ghost = fleet.join("ghost")  # enrolled, never started: its certificate acts as a node
        home = fleet.home
        address = (home / "admin" / "coordinator").read_text().strip()
        status = fleet.nodes()["alpha"]
        alpha_id, alpha_addr = status["info"]["id"], status["address"]
        ca = CertificateAuthority.load_or_create(home / "coordinator" / "ca")
        own = ca.issue_coordinator()
        admin_creds = _creds(home / "admin", "key.pem", "cert.pem")
        channels = [
            grpc.secure_channel(address, admin_creds, client_options(COORDINATOR_SERVER_NAME)),
            grpc.secure_channel(
                address,
                _creds(ghost / "identity", "node.key", "node.pem"),
                client_options(COORDINATOR_SERVER_NAME),
            ),
            grpc.secure_channel(
                alpha_addr,
                grpc.ssl_channel_credentials(ca.cert_pem, own.key_pem, own.cert_pem),
                client_options(node_server_name(alpha_id)),
            ),
            grpc.secure_channel(alpha_addr, admin_creds, client_options(node_server_name(alpha_id))),
        ]
        work, remote = make_repo(base / "repo")
        d = Daemons(
            fleet,
            *channels,
            alpha_id=alpha_id,
            ghost_id=(ghost / "identity" / "id").read_text().strip(),
            repo=work,
            remote=remote,
            marker=base / "pwned",
        )
        # A run that has ended, for the ids that exist; and a secret runs may name.
        got, details, reply = d.coordinator(
            "SubmitRun",
            coordinator_pb2.SubmitRunRequest(
                tasks=[coordinator_pb2.TaskSpec(command="true")],
                placement=coordinator_pb2.PlacementSpec(labels=NEVER),
            ),
        )
        assert got == OK, details
        run = coordinator_pb2.Run.FromString(reply)
        d.final_run, d.final_job = run.id, run.jobs[0].id
        assert d.coordinator("Cancel", coordinator_pb2.CancelRequest(id=run.id))[0] == OK
        got, details, _ = d.coordinator(
            "SetSecret", coordinator_pb2.SetSecretRequest(name=SECRET, value="s3cr3t!")
        )
        assert got == OK, details
        yield d
    finally:
        for channel in channels:
            channel.close()
        leftovers = []  # what the daemons started and may leave behind (a git that hangs)
        for proc in fleet.procs.values():
            with contextlib.suppress(psutil.Error):
                leftovers += psutil.Process(proc.pid).children(recursive=True)
        fleet.close()
        for child in leftovers:
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture
def findings(daemons: Daemons) -> Findings:
    return Findings(logs_from=daemons.log_sizes())


def verify(d: Daemons, findings: Findings) -> None:
    """The end of every test: the daemons live, logged no traceback, and nothing was found."""
    d.alive()
    time.sleep(0.3)  # what a last call logs asynchronously
    for line in d.log_problems(findings.logs_from):
        daemon, _, text = line.partition(": ")
        text = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", text)  # the time differs, the line does not
        findings.add(f"{daemon} log: {text[:160]}", line)
    assert not findings.seen, findings.report()


# --- (a) bodies that are not (or barely) protobuf ------------------------------------


def _mutate(seed: bytes, ops: list[tuple[int, int, str]]) -> bytes:
    b = bytearray(seed)
    for pos, value, op in ops:
        if op == "flip" and b:
            b[pos % len(b)] ^= value or 1
        elif op == "set" and b:
            b[pos % len(b)] = value
        elif op == "insert":
            b.insert(pos % (len(b) + 1), value)
        elif op == "delete" and b:
            del b[pos % len(b)]
        elif op == "truncate":
            del b[pos % (len(b) + 1) :]
    return bytes(b)


EDGE_BODIES = [
    b"\xff" * 16,
    b"\x08" + b"\xff" * 10 + b"\x01",  # a varint longer than 10 bytes
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
    b"\x0a\x05abc",  # truncated
    b"\x0a\x02\xc3\x28",  # invalid UTF-8 in field 1
    b"\x0a\x03\xed\xa0\x80",  # a UTF-8 surrogate
    b"\x0b" * 200,  # start-group without end, deep
    b"\x0c",  # end-group without start
    b"\x00",  # field number 0
    b"\xfa\xff\xff\xff\x7f\x00",  # field number 2^29-1... and more
    b"\x0f",  # wire type 7
    b"\x0e",  # wire type 6
    b"\x0a" + b"\x80\x01" + b"\x0a\x7f" * 64,  # nested lengths that lie
    b"\x12\x00" * 2000,  # repeated empty submessages
]


def _raw_bodies(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    op = st.tuples(
        st.integers(0, 10**6),
        st.integers(0, 255),
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    )
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=64, max_size=2048),
        st.builds(_mutate, st.sampled_from(seeds), st.lists(op, min_size=1, max_size=4)),
        st.sampled_from(EDGE_BODIES),
    )


def _methods(service: Any) -> dict[str, tuple[type[Message], bool]]:
    """name -> (request class, server streaming), from the service's descriptor, so that a
    new RPC is fuzzed without a change here."""
    out = {}
    for m in service.methods:
        if m.client_streaming:
            continue
        out[m.name] = (_message_class(m.input_type.full_name), m.server_streaming)
    return out


def _message_class(full_name: str) -> type[Message]:
    name = full_name.rpartition(".")[2]
    for module in (coordinator_pb2, node_pb2, types_pb2):
        if hasattr(module, name):
            cls: type[Message] = getattr(module, name)
            return cls
    raise KeyError(full_name)


COORDINATOR_METHODS = _methods(coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"])
NODE_METHODS = {
    name: spec
    for name, spec in _methods(node_pb2.DESCRIPTOR.services_by_name["Node"]).items()
    if not spec[1]  # Session is the coordinator's own stream of the node's events
}


def _coordinator_seeds(d: Daemons) -> dict[str, list[bytes]]:
    submit = coordinator_pb2.SubmitRunRequest(
        name="n",
        tasks=[coordinator_pb2.TaskSpec(command="true", name="t", model="m")],
        placement=coordinator_pb2.PlacementSpec(labels=NEVER, networks=["lan"]),
        env={"A": "1"},
        timeout_s=5,
    )
    seeds: dict[str, list[Message]] = {
        "RegisterNode": [
            coordinator_pb2.RegisterNodeRequest(
                info=types_pb2.NodeInfo(id=d.ghost_id, addresses=["127.0.0.1:9"], slots=1)
            )
        ],
        "SubmitRun": [submit],
        "GetRun": [coordinator_pb2.GetRunRequest(run_id=d.final_run)],
        "GetJob": [coordinator_pb2.GetJobRequest(job_id=d.final_job)],
        "WatchRun": [coordinator_pb2.WatchRunRequest(run_id=d.final_run, logs=True)],
        "StreamLogs": [coordinator_pb2.StreamLogsRequest(job_id=d.final_job, follow=True)],
        "Cancel": [coordinator_pb2.CancelRequest(id=d.final_run)],
        "Cleanup": [coordinator_pb2.CleanupRequest(run_id=d.final_run)],
        "Retry": [coordinator_pb2.RetryRequest(id="r000000.1", failed=True)],  # no such job: nothing runs
        "DrainNode": [coordinator_pb2.DrainNodeRequest(node="ghost", undo=True)],
        "CreateToken": [coordinator_pb2.CreateTokenRequest(ttl_s=60)],
        "ListRuns": [coordinator_pb2.ListRunsRequest(limit=5)],
        "BatchResults": [coordinator_pb2.BatchResultsRequest(run_id=d.final_run)],
    }
    out = {}
    for name, (cls, _) in COORDINATOR_METHODS.items():
        out[name] = [m.SerializeToString() for m in seeds.get(name, [])] + [cls().SerializeToString()]
        out[name] = [s for s in out[name] if s] or [b"\x0a\x01x"]
    return out


def _safe_submit(body: bytes) -> bytes | None:
    """The body, made never to run anywhere if it decodes into a run; None to skip it."""
    try:
        request = coordinator_pb2.SubmitRunRequest.FromString(body)
    except DecodeError:
        return body
    if not request.tasks:
        return body
    # Concatenated messages merge; the label we append wins over any the body names.
    body += coordinator_pb2.SubmitRunRequest(
        placement=coordinator_pb2.PlacementSpec(labels=NEVER)
    ).SerializeToString()
    request = coordinator_pb2.SubmitRunRequest.FromString(body)
    return body if request.placement.labels.get("flota-fuzz") == "never" else None


def _safe_spec(spec: types_pb2.JobSpec) -> bool:
    """Whether a node may run this spec here: a harmless shell command, nothing to dial."""
    return (
        spec.agent != "llm"
        and spec.command in SAFE_COMMANDS
        and not spec.HasField("repo")
        and not spec.resume_branches
    )


def test_coordinator_rejects_bodies_that_do_not_decode(daemons: Daemons, findings: Findings) -> None:
    d = daemons
    seeds = _coordinator_seeds(d)
    ours = {"alpha", "ghost", d.alpha_id, d.ghost_id}

    def one(method: str, body: bytes, as_admin: bool) -> None:
        cls, stream = COORDINATOR_METHODS[method]
        try:
            request: Message | None = cls.FromString(body)
        except DecodeError:
            request = None
        if method == "SubmitRun":
            safe = _safe_submit(body)
            if safe is None:
                return
            body = safe
        if method == "RemoveNode" and getattr(request, "node", "") in ours:
            return
        if method == "Prune" and request is not None:  # messages merge: the last dry_run wins
            body += coordinator_pb2.PruneRequest(dry_run=True).SerializeToString()
        role_ok = as_admin != (method == "RegisterNode")
        channel = d.admin if as_admin else d.as_node
        got, details, reply = d.invoke(channel, f"/flota.v1.Coordinator/{method}", body, stream)
        if request is None:  # the role may be checked before the body is read
            want: frozenset[grpc.StatusCode] = frozenset({INVALID} if role_ok else {INVALID, DENIED})
            label = "undecodable body" + ("" if role_ok else ", wrong role")
        else:
            want = CLEAN if role_ok else frozenset({DENIED})
            label = "decodable body" + ("" if role_ok else ", wrong role")
        d.check(findings, method, label, got, details, want, show(body))
        if method == "SubmitRun" and got == OK:
            d.cancel_run(findings, reply, show(body))

    for method in sorted(COORDINATOR_METHODS):
        for body in EDGE_BODIES:
            one(method, body, method != "RegisterNode")

    @fuzzing(400)
    @given(
        method=st.sampled_from(sorted(COORDINATOR_METHODS)),
        data=st.data(),
        as_admin=st.sampled_from([True, True, True, False]),
    )
    def fuzz(method: str, data: st.DataObject, as_admin: bool) -> None:
        one(method, data.draw(_raw_bodies(seeds[method])), as_admin)

    run(fuzz)
    verify(d, findings)


def test_node_rejects_bodies_that_do_not_decode(daemons: Daemons, findings: Findings) -> None:
    d = daemons
    seeds: dict[str, list[bytes]] = {
        "StartJob": [
            types_pb2.JobSpec(
                job_id="fz.1", run_id="fz", attempt_id="fz.1.a1", agent="shell", command="true"
            ).SerializeToString()
        ],
        "CancelJob": [node_pb2.CancelJobRequest(attempt_id="fz.1.a1", reason="r").SerializeToString()],
        "AckResults": [node_pb2.AckResultsRequest(attempt_ids=["fz.1.a1", "x"]).SerializeToString()],
        "Cleanup": [node_pb2.NodeCleanupRequest(run_id="fz").SerializeToString()],
    }

    def one(method: str, body: bytes, as_coordinator: bool) -> None:
        cls, _ = NODE_METHODS[method]
        try:
            request: Message | None = cls.FromString(body)
        except DecodeError:
            request = None
        if isinstance(request, types_pb2.JobSpec) and not validate_spec(request) and not _safe_spec(request):
            return  # the node would run it: only harmless commands, nothing to dial
        channel = d.node if as_coordinator else d.node_as_admin
        got, details, _ = d.invoke(channel, f"/flota.v1.Node/{method}", body)
        if request is None:
            want = frozenset({INVALID} if as_coordinator else {INVALID, DENIED})
            label = "undecodable body" + ("" if as_coordinator else ", wrong role")
        else:
            want = CLEAN if as_coordinator else frozenset({DENIED})
            label = "decodable body" + ("" if as_coordinator else ", wrong role")
        d.check(findings, method, label, got, details, want, show(body))

    for method in sorted(NODE_METHODS):
        for body in EDGE_BODIES:
            one(method, body, True)

    @fuzzing(300)
    @given(
        method=st.sampled_from(sorted(NODE_METHODS)),
        data=st.data(),
        as_coordinator=st.sampled_from([True, True, True, False]),
    )
    def fuzz(method: str, data: st.DataObject, as_coordinator: bool) -> None:
        one(method, data.draw(_raw_bodies(seeds.get(method) or [b"\x0a\x01x"])), as_coordinator)

    run(fuzz)
    verify(d, findings)


# --- (b) well-formed messages, hostile values: coordinator -----------------------------


@dataclass(frozen=True)
class Field:
    """One field of a request: the values to try (each alone, in `pool`; random ones in
    combination, from `values`), how to set one, and whether the server should take it."""

    name: str
    pool: list[Any]
    values: st.SearchStrategy[Any]
    apply: Callable[[Any, Any], None]
    valid: Callable[[Any], bool]
    label: Callable[[Any], str] = lambda v: kind(v) if isinstance(v, str) else "value"


def _first_task(req: coordinator_pb2.SubmitRunRequest, name: str, value: str) -> None:
    if req.tasks:  # no task: the run is refused for that already
        setattr(req.tasks[0], name, value)


def _set_tasks(req: coordinator_pb2.SubmitRunRequest, n: int) -> None:
    del req.tasks[:]
    req.tasks.extend(coordinator_pb2.TaskSpec(command="true") for _ in range(n))


def _set_resources(req: coordinator_pb2.SubmitRunRequest, v: tuple[float, int, int]) -> None:
    r = req.placement.resources
    r.cpus, r.memory_mb, r.gpus = v


def _set_networks(req: coordinator_pb2.SubmitRunRequest, v: tuple[list[str], bool]) -> None:
    (req.placement.avoid_networks if v[1] else req.placement.networks).extend(v[0])


def _no_control(value: str) -> bool:
    return not _CONTROL.search(value)


def _command_ok(value: str) -> bool:
    return bool(value.strip()) and len(value) <= 65536 and "\0" not in value


def _floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(FLOATS), st.floats())


def _int32s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))


def _int64s() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))


AGENTS = ["", "shell", "Shell", "claude", "../shell", "shell\0", "shell\n", " shell"]
COMMANDS = ["", " ", "\t\n", "\u2003", "a\0b", "\0", "x" * 65536, "x" * 65537, *SAFE_COMMANDS]
SECRET_NAMES = [SECRET, "UNSET_FUZZ_SECRET", "1BAD", "", "A B", "A\0", "ü"]


def _submit_fields(known: set[str]) -> list[Field]:
    """In the order they are applied: the task count first, so no value set later is lost."""
    env_keys = GOOD_ENV_KEYS + BAD_ENV_KEYS
    label_keys, label_values = GOOD_LABEL_KEYS + BAD_LABEL_KEYS, GOOD_LABEL_VALUES + BAD_LABEL_VALUES
    profiles = GOOD_PROFILES + BAD_PROFILES
    pins = [*sorted(known), "", "nope", *BAD_NODE_NAMES]
    return [
        Field(
            "tasks", [0, 2, 3, 20], st.sampled_from([0, 2, 3, 20]), _set_tasks, lambda n: 1 <= n <= 1000, str
        ),
        Field(
            "task.agent",
            AGENTS,
            text_values(AGENTS, 10),
            lambda r, v: _first_task(r, "agent", v),
            # shell, or an agent CLI template's name (its command runs); llm needs a prompt
            lambda v: v in ("", "shell") or (bool(NAME_RE.match(v)) and v != "llm"),
        ),
        Field(
            "task.command",
            COMMANDS,
            text_values(COMMANDS),
            lambda r, v: _first_task(r, "command", v),
            _command_ok,
            lambda v: kind(v) + ("" if len(v) <= 65536 else " >64KiB"),
        ),
        Field("task.name", HOSTILE_TEXT, text_values(), lambda r, v: _first_task(r, "name", v), _no_control),
        Field(
            "task.model",
            HOSTILE_TEXT,
            text_values(),
            lambda r, v: _first_task(r, "model", v),
            lambda v: v == "" or bool(_MODEL.match(v)),
            lambda v: kind(v) + (" >200" if len(v) > 200 else ""),
        ),
        Field(
            "task.prompt",
            HOSTILE_TEXT,
            text_values(),
            lambda r, v: _first_task(r, "prompt", v),
            lambda v: "\0" not in v,
        ),
        Field("name", HOSTILE_TEXT, text_values(), lambda r, v: setattr(r, "name", v), _no_control),
        Field(
            "env",
            [("A", v) for v in HOSTILE_TEXT] + [(k, "v") for k in env_keys],
            st.tuples(text_values(env_keys, 10).filter(lambda k: k != SECRET), text_values()),
            lambda r, kv: r.env.__setitem__(*kv),
            lambda kv: bool(ENV_KEY_RE.match(kv[0])) and "\0" not in kv[1],
            lambda kv: f"key {'ok' if ENV_KEY_RE.match(kv[0]) else kind(kv[0])}, value {kind(kv[1])}",
        ),
        Field(
            "timeout_s",
            FLOATS,
            _floats(),
            lambda r, v: setattr(r, "timeout_s", v),
            lambda v: 0 <= v <= 7 * 86400,
            fkind,
        ),
        Field(
            "retries", INT32, _int32s(), lambda r, v: setattr(r, "retries", v), lambda v: -1 <= v <= 10, str
        ),
        Field(
            "placement.labels",
            [(k, "v") for k in label_keys] + [("k", v) for v in label_values],
            st.tuples(
                text_values(label_keys, 10).filter(lambda k: k not in NEVER), text_values(label_values, 10)
            ),
            lambda r, kv: r.placement.labels.__setitem__(*kv),
            lambda kv: bool(LABEL_KEY_RE.match(kv[0]) and LABEL_VALUE_RE.match(kv[1])),
            lambda kv: f"{kind(kv[0])}={kind(kv[1])}",
        ),
        Field(
            "placement.networks",
            [([p], avoid) for p in profiles for avoid in (False, True)],
            st.tuples(st.lists(text_values(profiles, 10), min_size=1, max_size=3), st.booleans()),
            _set_networks,
            lambda v: all(PROFILE_RE.match(p) for p in v[0]),
            lambda v: ("avoid " if v[1] else "") + ",".join(kind(p) for p in v[0]),
        ),
        Field(
            "placement.node",
            pins,
            text_values(pins, 12),
            lambda r, v: setattr(r.placement, "node", v),
            lambda v: v == "" or v in known,
            lambda v: "known" if v in known else kind(v),
        ),
        Field(
            "placement.resources",
            [(c, 0, 0) for c in FLOATS] + [(0.0, m, 0) for m in INT64] + [(0.0, 0, g) for g in INT32],
            st.tuples(_floats(), _int64s(), _int32s()),
            _set_resources,
            lambda v: 0 <= v[0] <= 4096 and 0 <= v[1] <= 2**24 and 0 <= v[2] <= 64,
            lambda v: f"cpus {fkind(v[0])}",
        ),
        Field(
            "secrets",
            [[n] for n in SECRET_NAMES] + [[SECRET, SECRET]],
            st.lists(text_values(SECRET_NAMES, 10), min_size=1, max_size=3),
            lambda r, v: r.secrets.extend(v),
            lambda v: all(n == SECRET for n in v),  # the only one set; env never names it
            lambda v: ",".join(kind(n) if n != SECRET else "set" for n in v),
        ),
    ]


def _submit_base() -> coordinator_pb2.SubmitRunRequest:
    return coordinator_pb2.SubmitRunRequest(
        tasks=[coordinator_pb2.TaskSpec(command="true")],
        placement=coordinator_pb2.PlacementSpec(labels=NEVER),
    )


def _submit(
    d: Daemons, findings: Findings, req: coordinator_pb2.SubmitRunRequest, label: str | list[str], ok: bool
) -> None:
    got, details, reply = d.coordinator("SubmitRun", req)
    d.check(findings, "SubmitRun", label, got, details, {OK} if ok else {INVALID}, show(req))
    if got == OK:
        d.cancel_run(findings, reply, show(req))


def _each_then_combined(
    fields: list[Field],
    base: Callable[[], Any],
    send: Callable[[Any, str | list[str], bool], None],
    max_examples: int,
) -> None:
    """Every pooled value of every field alone; then random values of 1-3 fields at once."""
    for f in fields:
        for value in f.pool:
            request = base()
            f.apply(request, value)
            send(request, f"{f.name}={f.label(value)}", f.valid(value))

    @fuzzing(max_examples)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        request = base()
        chosen = data.draw(st.lists(st.sampled_from(range(len(fields))), min_size=1, max_size=3, unique=True))
        bad, good = [], []
        for f in (fields[i] for i in sorted(chosen)):
            value = data.draw(f.values)
            f.apply(request, value)
            (good if f.valid(value) else bad).append(f"{f.name}={f.label(value)}")
        send(request, bad or "valid: " + ", ".join(good), not bad)

    run(fuzz)


def test_submit_run_refuses_hostile_values(daemons: Daemons, findings: Findings) -> None:
    d = daemons
    task = coordinator_pb2.TaskSpec
    edge: list[tuple[str, bool, Callable[[coordinator_pb2.SubmitRunRequest], object]]] = [
        (f"{MAX_JOBS} tasks", True, lambda r: r.tasks.extend([task(command="true")] * (MAX_JOBS - 1))),
        (f"{MAX_JOBS + 1} tasks", False, lambda r: r.tasks.extend([task(command="true")] * MAX_JOBS)),
        ("input over the cap", False, lambda r: setattr(r.tasks[0], "input", "x" * (MAX_INPUT + 1))),
        ("input path up", False, lambda r: setattr(r.tasks[0], "input_path", "../../x")),
        ("run budget negative", False, lambda r: setattr(r, "run_budget_usd", -1.0)),
        ("5000 env entries", True, lambda r: r.env.update({f"K{i}": "v" for i in range(5000)})),
        ("5000 labels", True, lambda r: r.placement.labels.update({f"k{i}": "v" for i in range(5000)})),
        ("2000 networks", True, lambda r: r.placement.networks.extend(["lan"] * 2000)),
        ("65 secrets", False, lambda r: r.secrets.extend([SECRET] * 65)),
        ("secret also in env", False, lambda r: (r.secrets.append(SECRET), r.env.update({SECRET: "x"}))),
        ("env value 1 MiB", True, lambda r: r.env.update({"A": "v" * (1 << 20)})),
        ("pinned to ghost", True, lambda r: setattr(r.placement, "node", "ghost")),
    ]
    for label, ok, change in edge:
        req = _submit_base()
        change(req)
        _submit(d, findings, req, label, ok)
    fields = _submit_fields({"alpha", "ghost", d.alpha_id, d.ghost_id})
    _each_then_combined(fields, _submit_base, lambda r, label, ok: _submit(d, findings, r, label, ok), 300)
    verify(d, findings)


def test_submit_run_refuses_hostile_repositories(daemons: Daemons, findings: Findings) -> None:
    d = daemons
    head = git("rev-parse", "HEAD", cwd=d.repo).strip()
    marker = str(d.marker)
    good_paths = [str(d.repo), str(d.repo / "."), str(d.repo) + "/"]
    bad_paths = ["/nonexistent", "/etc", "/", "relative/dir", "..", "~", "$HOME", "/a\0b", str(d.repo) + "\n"]
    good_remotes = ["", "origin", str(d.remote), f"file://{d.remote}"]
    bad_remotes = [
        "-upload-pack=touch " + marker,
        "--upload-pack=touch " + marker,
        f"ext::sh -c touch% {marker}",
        "fd::17",
        "file:///etc",
        "/nonexistent.git",
        "nosuchremote",
        "origin\n",
        "a\0b",
    ]
    good_refs = ["", "HEAD", "main", head, "refs/heads/main"]
    bad_refs = [
        "--output=" + marker,
        "-h",
        "../../etc/passwd",
        "HEAD~100",
        "a\0b",
        "main\n",
        "x" * 10_000,
        "@{-1}",
        "HEAD@{1}",
        "HEAD@{yesterday}",
        "HEAD^{tree}",
        "HEAD:README.md",
        "main..HEAD",
        "^",
    ]

    hung: set[str] = set()  # each hang costs a deadline: once is enough to report it

    def one(path: str, remote: str, ref: str, working_tree: bool) -> None:
        if remote in hung:
            return
        req = _submit_base()
        req.repo.path, req.repo.remote, req.repo.ref = path, remote, ref
        req.repo.from_working_tree = working_tree
        ok = path in good_paths and remote in good_remotes and ref in good_refs
        fields = [("path", path, good_paths), ("remote", remote, good_remotes), ("ref", ref, good_refs)]
        bad = [f"repo.{name}={value[:40]!r}" for name, value, good in fields if value not in good]
        got, details, reply = d.coordinator("SubmitRun", req)
        # A repository or remote that cannot be used is FAILED_PRECONDITION by design.
        want = {OK} if ok else {INVALID, PRECONDITION}
        d.check(findings, "SubmitRun", bad or "repo valid", got, details, want, show(req))
        if got == S.DEADLINE_EXCEEDED:
            hung.add(remote)
        if got == OK:
            d.cancel_run(findings, reply, show(req))

    for path in good_paths[:1] + bad_paths:
        one(path, "", "", False)
    for remote in good_remotes + bad_remotes:
        one(good_paths[0], remote, "", False)
    for ref in good_refs + bad_refs:
        one(good_paths[0], "", ref, True)

    @fuzzing(60)
    @given(
        path=st.sampled_from(good_paths + bad_paths),
        remote=st.sampled_from(good_remotes + bad_remotes),
        ref=st.sampled_from(good_refs + bad_refs),
        working_tree=st.booleans(),
    )
    def fuzz(path: str, remote: str, ref: str, working_tree: bool) -> None:
        one(path, remote, ref, working_tree)

    run(fuzz)
    assert not d.marker.exists(), "a remote, ref or path ran a command on the coordinator"
    verify(d, findings)


def test_id_lookups_refuse_malformed_ids(daemons: Daemons, findings: Findings) -> None:
    """GetRun, GetJob, Cancel, Cleanup, WatchRun, StreamLogs: OK or NOT_FOUND for an id
    that could be one, INVALID_ARGUMENT for one that could not."""
    d = daemons
    calls: dict[str, Callable[[str, bool], Message]] = {
        "GetRun": lambda v, _: coordinator_pb2.GetRunRequest(run_id=v),
        "GetJob": lambda v, _: coordinator_pb2.GetJobRequest(job_id=v),
        "Cancel": lambda v, _: coordinator_pb2.CancelRequest(id=v),
        "Cleanup": lambda v, _: coordinator_pb2.CleanupRequest(run_id=v),
        "WatchRun": lambda v, flag: coordinator_pb2.WatchRunRequest(run_id=v, logs=flag),
        "StreamLogs": lambda v, flag: coordinator_pb2.StreamLogsRequest(job_id=v, follow=flag),
    }

    def one(method: str, value: str, flag: bool) -> None:
        request = calls[method](value, flag)
        got, details, _ = d.coordinator(method, request)
        if well_formed_id(value):
            want, label = {OK, NOT_FOUND}, "well-formed id"
        else:
            want, label = {INVALID}, f"malformed id: {kind(value)}"
        d.check(findings, method, label, got, details, want, show(request))

    for method in calls:
        for value in [d.final_run, d.final_job, *BAD_IDS, *GOOD_IDS]:
            one(method, value, True)

    @fuzzing(200)
    @given(method=st.sampled_from(sorted(calls)), value=ids(), flag=st.booleans())
    def fuzz(method: str, value: str, flag: bool) -> None:
        one(method, value, flag)

    run(fuzz)
    verify(d, findings)


def test_small_admin_calls_refuse_hostile_values(daemons: Daemons, findings: Findings) -> None:
    """CreateToken, DrainNode, RemoveNode, ListRuns, secrets, Prune (dry runs)."""
    d = daemons
    known = {"ghost", d.ghost_id}

    def token(ttl: float) -> None:
        req = coordinator_pb2.CreateTokenRequest(ttl_s=ttl)
        got, details, _ = d.coordinator("CreateToken", req)
        ok = ttl == 0 or 10 <= ttl <= 7 * 86400
        d.check(
            findings, "CreateToken", f"ttl_s={fkind(ttl)}", got, details, {OK} if ok else {INVALID}, show(req)
        )

    def node_call(method: str, value: str, undo: bool) -> None:
        if method == "DrainNode":
            req: Message = coordinator_pb2.DrainNodeRequest(node=value, undo=undo)
        else:
            req = coordinator_pb2.RemoveNodeRequest(node=value)
        got, details, _ = d.coordinator(method, req)
        if value in known:
            want, label = {OK}, "known node"
        elif node_ref_ok(value):
            want, label = {NOT_FOUND}, "well-formed unknown node"
        else:
            want, label = {INVALID}, f"malformed node name: {kind(value)}"
        d.check(findings, method, label, got, details, want, show(req))

    def secret(name: str, value: str) -> None:
        req = coordinator_pb2.SetSecretRequest(name=name, value=value)
        got, details, _ = d.coordinator("SetSecret", req)
        ok = bool(ENV_KEY_RE.match(name)) and "\0" not in value and len(value.encode()) <= 65536
        ok = ok and len(value.strip()) >= 4
        label = f"name={'ok' if ENV_KEY_RE.match(name) else kind(name)} value={kind(value)}"
        d.check(findings, "SetSecret", label, got, details, {OK} if ok else {INVALID}, show(req))
        if name != SECRET:
            req2 = coordinator_pb2.DeleteSecretRequest(name=name)
            got, details, _ = d.coordinator("DeleteSecret", req2)
            # A name refused a value may still exist (set by an earlier call): OK or NOT_FOUND.
            want = {OK} if ok else {OK, NOT_FOUND} if ENV_KEY_RE.match(name) else {INVALID}
            d.check(findings, "DeleteSecret", label, got, details, want, show(req2))

    def prune(age: float, run_id: str) -> None:
        # A dry run only: the daemons' runs stay for the other tests.
        req = coordinator_pb2.PruneRequest(older_than_s=age, dry_run=True, run_ids=[run_id] if run_id else [])
        got, details, _ = d.coordinator("Prune", req)
        ok = age > 0 and math.isfinite(age) and (not run_id or well_formed_id(run_id))
        label = f"older_than_s={fkind(age)} run_id={kind(run_id) if run_id else 'none'}"
        d.check(findings, "Prune", label, got, details, {OK} if ok else {INVALID}, show(req))

    for ttl in FLOATS:
        token(ttl)
        prune(ttl, "")
    for value in [d.final_run, *BAD_IDS, *GOOD_IDS]:
        prune(1.0, value)
    for value in [*known, "nosuchnode", d.alpha_id[::-1], *BAD_NODE_NAMES, *BAD_IDS]:
        node_call("DrainNode", value, True)
        if value not in known:
            node_call("RemoveNode", value, False)
    for name in [SECRET, "OTHER_FUZZ", "", "1A", "A B", "A\0", "ü"]:
        for value in ["s3cr3t!", "", "abc", "a\0bcdef", "x" * 65536, "x" * 65537, "ü" * 30000]:
            secret(name, value)
    for limit in INT32:
        got, details, _ = d.coordinator("ListRuns", coordinator_pb2.ListRunsRequest(limit=limit))
        d.check(findings, "ListRuns", "limit", got, details, {OK}, str(limit))
    for method, plain in [
        ("ListNodes", coordinator_pb2.ListNodesRequest()),
        ("ListSecrets", coordinator_pb2.ListSecretsRequest()),
    ]:
        got, details, _ = d.coordinator(method, plain)
        d.check(findings, method, "plain", got, details, {OK}, method)

    @fuzzing(200)
    @given(
        which=st.sampled_from(["token", "drain", "remove", "secret", "prune"]),
        ttl=st.one_of(st.sampled_from(FLOATS), st.floats()),
        name=text_values([*known, *BAD_NODE_NAMES, *GOOD_ENV_KEYS, *BAD_ENV_KEYS], 20),
        value=text_values(),
        undo=st.booleans(),
    )
    def fuzz(which: str, ttl: float, name: str, value: str, undo: bool) -> None:
        if which == "token":
            token(ttl)
        elif which == "prune":
            prune(ttl, value[:120])
        elif which == "secret":
            secret(name, value)
        elif which == "remove":
            assume(name not in known)
            node_call("RemoveNode", name, undo)
        else:
            node_call("DrainNode", name, undo)

    run(fuzz)
    verify(d, findings)


def test_register_node_refuses_hostile_values(daemons: Daemons, findings: Findings) -> None:
    """RegisterNode, with a node certificate (ghost's: enrolled, not running). Addresses
    are loopback ones or ones the coordinator must refuse: nothing leaves this host."""
    d = daemons

    def one(info: types_pb2.NodeInfo, leaving: bool = False, as_admin: bool = False) -> None:
        req = coordinator_pb2.RegisterNodeRequest(info=info, leaving=leaving)
        got, details, _ = d.coordinator("RegisterNode", req, d.admin if as_admin else d.as_node)
        if as_admin or info.id != d.ghost_id:
            want, label = {DENIED}, "admin certificate" if as_admin else f"another node's id: {kind(info.id)}"
        else:
            # Addresses that cannot be are dropped (OK) or refused (INVALID_ARGUMENT).
            bad = {a for a in info.addresses if a in ADDRESSES_BAD}
            which = f", address {bad.pop()!r}" if len(bad) == 1 else ", bad addresses" if bad else ""
            want, label = {OK, INVALID}, "own id" + which
        d.check(findings, "RegisterNode", label, got, details, want, show(req))

    for address in ADDRESSES_OK + ADDRESSES_BAD:
        one(types_pb2.NodeInfo(id=d.ghost_id, addresses=[address]))
    one(types_pb2.NodeInfo(id=d.ghost_id, addresses=["127.0.0.1:9"] * 5000))
    for other in [d.alpha_id, "", "x" * 100, d.ghost_id + "\n", "\0", d.ghost_id.upper()]:
        one(types_pb2.NodeInfo(id=other, addresses=["127.0.0.1:9"]))
    one(types_pb2.NodeInfo(id=d.ghost_id), as_admin=True)

    @fuzzing(150)
    @given(
        node_id=st.sampled_from([d.ghost_id] * 6 + [d.alpha_id, "", d.ghost_id + "\n"]),
        addresses=st.lists(st.sampled_from(ADDRESSES_OK + ADDRESSES_BAD), max_size=20),
        leaving=st.booleans(),
        name=text_values(),
        network=text_values(),
        labels=st.dictionaries(text_values(max_size=10), text_values(max_size=10), max_size=5),
        slots=st.sampled_from(INT32),
        floats=st.lists(_floats(), min_size=3, max_size=3),
    )
    def fuzz(
        node_id: str,
        addresses: list[str],
        leaving: bool,
        name: str,
        network: str,
        labels: dict[str, str],
        slots: int,
        floats: list[float],
    ) -> None:
        info = types_pb2.NodeInfo(
            id=node_id,
            name=name,
            network=network,
            labels=labels,
            slots=slots,
            addresses=addresses,
            unreachable_after_s=floats[0],
            lost_after_s=floats[1],
            facts=types_pb2.Facts(
                load_1m=floats[2], cpu_count=slots, memory_total_mb=-1, battery_percent=slots
            ),
        )
        one(info, leaving)

    run(fuzz)
    verify(d, findings)


# --- (b) well-formed messages, hostile values: node -------------------------------------


def _set_repo(spec: types_pb2.JobSpec, v: tuple[str, str, str, str]) -> None:
    spec.repo.CopyFrom(types_pb2.RepoSpec(url=v[0], base_commit=v[1], base_ref=v[2]))
    spec.branch = v[3]


def _repo_parts(v: tuple[str, str, str, str]) -> list[str]:
    goods = (SAFE_URLS, GOOD_COMMITS, GOOD_REFS, GOOD_BRANCHES)
    names = ("url", "base_commit", "base_ref", "branch")
    return [
        f"{n} {value[:40]!r}" for n, value, good in zip(names, v, goods, strict=True) if value not in good
    ]


def _set_env(spec: types_pb2.JobSpec, v: tuple[str, str, str]) -> None:
    getattr(spec, v[0])[v[1]] = v[2]


def _env_ok(v: tuple[str, str, str]) -> bool:
    where, key, value = v
    return bool(ENV_KEY_RE.match(key)) and "\0" not in value and (where == "env" or len(value) <= 65536)


BAD_COMMANDS = ["", " ", "\t\n", "\u2003", "true\0rm -rf /", "\0", "x" * 65537]
ID_FIELDS = ["job_id", "run_id", "attempt_id"]


def _node_fields() -> list[Field]:
    env_keys = GOOD_ENV_KEYS + BAD_ENV_KEYS
    url0, branch0 = SAFE_URLS[0], GOOD_BRANCHES[0]
    branches = GOOD_BRANCHES + BAD_BRANCHES
    return [
        Field(
            "ids",
            [(n, v) for n in ID_FIELDS for v in BAD_IDS + GOOD_IDS],
            st.tuples(st.sampled_from(ID_FIELDS), ids()),
            lambda s, v: setattr(s, *v),
            lambda v: well_formed_id(v[1]),
            lambda v: f"{v[0]} {kind(v[1])}",
        ),
        Field(
            "agent",
            AGENTS,
            text_values(AGENTS, 10),
            lambda s, v: setattr(s, "agent", v),
            lambda v: bool(NAME_RE.match(v)) and v != "llm",
        ),
        Field(  # never random text: a valid command runs
            "command",
            SAFE_COMMANDS + BAD_COMMANDS,
            st.sampled_from(SAFE_COMMANDS + BAD_COMMANDS),
            lambda s, v: setattr(s, "command", v),
            lambda v: v in SAFE_COMMANDS,
            lambda v: kind(v) + ("" if len(v) <= 65536 else " >64KiB"),
        ),
        Field(
            "timeout_s",
            FLOATS,
            _floats(),
            lambda s, v: setattr(s, "timeout_s", v),
            lambda v: 0 <= v <= 7 * 86400,
            fkind,
        ),
        Field(
            "repo",
            [(u, COMMIT, "", branch0) for u in SAFE_URLS + BAD_URLS]
            + [(url0, c, "", branch0) for c in GOOD_COMMITS + BAD_COMMITS]
            + [(url0, COMMIT, r, branch0) for r in GOOD_REFS + BAD_REFS]
            + [(url0, COMMIT, "", b) for b in branches],
            st.tuples(
                st.sampled_from(SAFE_URLS + BAD_URLS),
                st.sampled_from(GOOD_COMMITS + BAD_COMMITS),
                st.sampled_from(GOOD_REFS + BAD_REFS),
                st.sampled_from(branches),
            ),
            _set_repo,
            lambda v: not _repo_parts(v),
            lambda v: ", ".join(_repo_parts(v)) or "ok",
        ),
        Field(
            "resume_branches",
            [[b] for b in branches],
            st.lists(st.sampled_from(branches), min_size=1, max_size=3),
            lambda s, v: s.resume_branches.extend(v),
            lambda v: all(b in GOOD_BRANCHES for b in v),
            lambda v: ",".join(repr(b[:30]) for b in v if b not in GOOD_BRANCHES) or "ok",
        ),
        Field(
            "env",
            [(w, "A", v) for w in ("env", "secrets") for v in HOSTILE_TEXT]
            + [(w, k, "v") for w in ("env", "secrets") for k in env_keys],
            st.tuples(
                st.sampled_from(["env", "secrets"]),
                text_values(env_keys, 10).filter(lambda k: k not in SHELL_KEYS),
                text_values(),
            ),
            _set_env,
            _env_ok,
            lambda v: f"{v[0]} key {'ok' if ENV_KEY_RE.match(v[1]) else kind(v[1])}, value {kind(v[2])}",
        ),
        Field(
            "model",
            HOSTILE_TEXT,
            text_values(),
            lambda s, v: setattr(s, "model", v),
            lambda v: _no_control(v) and len(v) <= 200,
            lambda v: kind(v) + (" >200" if len(v) > 200 else ""),
        ),
        Field(
            "name", HOSTILE_TEXT, text_values(), lambda s, v: setattr(s, "name", v), lambda v: "\0" not in v
        ),
        Field(
            "prompt",
            HOSTILE_TEXT,
            text_values(),
            lambda s, v: setattr(s, "prompt", v),
            lambda v: "\0" not in v,
        ),
        Field(
            "resources",
            [(c, 0, 0) for c in FLOATS] + [(0.0, m, g) for m, g in zip(INT64, INT32, strict=False)],
            st.tuples(_floats(), _int64s(), _int32s()),
            lambda s, v: s.resources.CopyFrom(types_pb2.Resources(cpus=v[0], memory_mb=v[1], gpus=v[2])),
            lambda v: True,  # informative only on the node
            lambda v: "any",
        ),
    ]


def _spec_base(d: Daemons) -> types_pb2.JobSpec:
    """A valid spec with fresh ids: each accepted one is a new attempt."""
    run = d.unique("fz")
    return types_pb2.JobSpec(
        job_id=f"{run}.1", run_id=run, attempt_id=f"{run}.1.a1", agent="shell", command="true", timeout_s=30
    )


def test_node_refuses_hostile_job_specs(daemons: Daemons, findings: Findings) -> None:
    d = daemons

    def base() -> types_pb2.JobSpec:
        return _spec_base(d)

    def start(spec: types_pb2.JobSpec, label: str | list[str], ok: bool) -> None:
        if ok:  # what the node will run here: harmless, and nothing to dial beyond loopback
            assert spec.agent != "llm" and spec.command in SAFE_COMMANDS, (spec.agent, spec.command)
            assert not spec.HasField("repo") or spec.repo.url in SAFE_URLS, spec.repo.url
        got, details, _ = d.call_node("StartJob", spec)
        d.check(findings, "StartJob", label, got, details, {OK} if ok else {INVALID}, show(spec))

    edge: list[tuple[str, bool, Callable[[types_pb2.JobSpec], object]]] = [
        ("5000 env entries", True, lambda s: s.env.update({f"K{i}": "v" for i in range(5000)})),
        (
            "100 resume branches",
            True,
            lambda s: s.resume_branches.extend([f"flota/r/{i}" for i in range(100)]),
        ),
        (
            "101 resume branches",
            False,
            lambda s: s.resume_branches.extend([f"flota/r/{i}" for i in range(101)]),
        ),
        ("secret 64 KiB + 1", False, lambda s: s.secrets.update({"S": "x" * 65537})),
        ("model forging a trailer", False, lambda s: setattr(s, "model", "m\nFlota-Job: forged")),
    ]
    for label, ok, change in edge:
        spec = base()
        change(spec)
        start(spec, label, ok)
    _each_then_combined(_node_fields(), base, start, 300)
    verify(d, findings)


def test_node_small_calls_refuse_hostile_values(daemons: Daemons, findings: Findings) -> None:
    """CancelJob, AckResults, Cleanup, ListJobs; and the wrong role."""
    d = daemons

    def one(method: str, values: list[str], reason: str = "") -> None:
        if method == "CancelJob":
            req: Message = node_pb2.CancelJobRequest(attempt_id=values[0], reason=reason)
        elif method == "AckResults":
            req = node_pb2.AckResultsRequest(attempt_ids=values)
        else:
            req = node_pb2.NodeCleanupRequest(run_id=values[0])
        got, details, _ = d.call_node(method, req)
        bad = [v for v in values if not well_formed_id(v)]
        want = {INVALID} if bad else {OK}
        label = (
            f"malformed id: {kind(bad[0])}" if bad else "well-formed id" + ("s" if len(values) > 1 else "")
        )
        d.check(findings, method, label, got, details, want, show(req))

    for value in BAD_IDS + GOOD_IDS:
        for method in ("CancelJob", "AckResults", "Cleanup"):
            one(method, [value])
    one("AckResults", [f"r{i}.1.a1" for i in range(5000)])
    one("AckResults", [])
    one("CancelJob", ["zzz"], "\0" + "x" * 100_000)
    got, details, _ = d.call_node("ListJobs", node_pb2.ListJobsRequest())
    d.check(findings, "ListJobs", "plain", got, details, {OK}, "ListJobs")
    spec = _spec_base(d)
    got, details, _ = d.call_node("StartJob", spec, d.node_as_admin)
    d.check(findings, "StartJob", "admin certificate", got, details, {DENIED}, show(spec))

    @fuzzing(200)
    @given(
        method=st.sampled_from(["CancelJob", "AckResults", "Cleanup"]),
        values=st.lists(ids(), min_size=1, max_size=5),
        reason=text_values(),
    )
    def fuzz(method: str, values: list[str], reason: str) -> None:
        one(method, values if method == "AckResults" else values[:1], reason)

    run(fuzz)
    verify(d, findings)


# --- afterwards ---------------------------------------------------------------------------


def test_daemons_alive_logs_clean_and_a_real_job_still_runs(daemons: Daemons) -> None:
    """Runs last (file order): whatever came before, the fleet still works."""
    d = daemons
    d.alive()
    got, details, _ = d.coordinator("DrainNode", coordinator_pb2.DrainNodeRequest(node="alpha", undo=True))
    assert got == OK, details

    def idle() -> bool:  # the fuzzed jobs the node accepted are over
        got, _, reply = d.call_node("ListJobs", node_pb2.ListJobsRequest())
        return got == OK and all(j.state != "running" for j in node_pb2.ListJobsReply.FromString(reply).jobs)

    wait_until(idle, timeout=30, what="the node to finish the fuzzed jobs")
    result = d.fleet.flota("run", "--on", "alpha", "--follow", "echo still-alive")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "still-alive" in result.stdout
    assert d.fleet.nodes()["alpha"]["state"] == "online"
    d.alive()
    assert not d.marker.exists()
    problems = d.log_problems()
    assert not problems, "the daemons logged tracebacks:\n" + "\n".join(problems[:40])
