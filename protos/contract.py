"""What the coordinator and the node daemon must agree on besides the messages.

Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "BUILD_MODULE",
    "FLOTA_VERSION",
    "build",
    "OLDEST_PROTOCOL",
    "PROTOCOL",
    "RUN_ACTIVE",
    "node_protocol",
    "redact",
    "ADMIN_CN_PREFIX",
    "ResultStatus",
    "EndReason",
    "COORDINATOR_CN",
    "COORDINATOR_SERVER_NAME",
    "DEFAULT_COORDINATOR_PORT",
    "NODE_CN_PREFIX",
    "SERVICE_TYPE",
    "TXT_FINGERPRINT",
    "TXT_ID",
    "TXT_PORT",
    "TXT_VERSION",
    "JoinToken",
    "TokenError",
    "fingerprint",
    "flota_home",
    "node_cn",
    "node_server_name",
    "parse_hostport",
]

# A run's statuses while it is not over ("waiting": running, with no job placed now).
RUN_ACTIVE = ("running", "waiting")

# The release, for every part (pyproject.toml reads it from here).
FLOTA_VERSION = "0.1.0"

# The build of a wheel `flota node add` makes: a digest of the source it was made from,
# stamped into the wheel as protos/_build.py (`BUILD = "..."`; no such file in a source
# tree). With the version it names an install: a same-version build of other source is
# another install (`flota node upgrade` installs it; `flota nodes` shows the build).
BUILD_MODULE = "protos._build"


def build() -> str:
    """This flota's stamped build ("" when it runs from a source tree)."""
    try:
        return str(importlib.import_module(BUILD_MODULE).BUILD)
    except (ImportError, AttributeError):
        return ""


# The wire contract between a coordinator and its nodes. It goes up by one when a release
# changes what the other side must understand; a coordinator takes nodes that speak
# OLDEST_PROTOCOL..PROTOCOL (this one and the one before), so a fleet can be upgraded
# coordinator first, then node by node (docs/cli.md, "Versions").
PROTOCOL = 2
OLDEST_PROTOCOL = 1


def node_protocol(sent: int) -> int:
    """What a node speaks: nodes from before protocol numbers (they send 0) spoke 1."""
    return sent or 1


# mDNS: a hint where a node might be, never who it is (see DESIGN.md rule 3).
SERVICE_TYPE = "_flota._tcp.local."
TXT_ID = "id"
TXT_VERSION = "v"
TXT_PORT = "port"
TXT_FINGERPRINT = "fp"


class ResultStatus(StrEnum):
    """How an attempt ended: the node reports it, the coordinator records it as its
    attempt's and job's status. The wire carries the lowercase string."""

    SUCCESS = "success"
    PARTIAL = "partial"  # stopped early (steps, budget, cut off); its work is on the branch
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"  # the node (or its daemon) went away with the attempt


class EndReason(StrEnum):
    """Why an attempt ended as it did, where its status alone does not say (the wire's
    `JobResult.reason`): what the coordinator's retry rules read, never the error's wording.
    The node sets it; an unknown word from a newer node reads as NONE."""

    NONE = ""
    MAX_STEPS = "max_steps"  # partial: the agent used up its --max-steps
    BUDGET = "budget"  # partial: the agent's next model call would pass its budget
    TIME_LIMIT = "time_limit"  # partial: the agent's own time limit ran out
    CUT_OFF = "cut_off"  # partial: the node stopped it, cut off from the coordinator too long
    MODEL_UNREACHABLE = "model_unreachable"  # failed: the model server could not be reached
    RUN_BUDGET = "run_budget"  # cancelled, never started: its run's --budget was spent (the coordinator's)

    @classmethod
    def read(cls, word: str) -> EndReason:
        """The reason `word` names; NONE for a word this version does not know."""
        try:
            return cls(word)
        except ValueError:
            return cls.NONE


DEFAULT_COORDINATOR_PORT = 7370  # the enrollment port is the next one unless configured

# Certificates: the role is the subject CN; the TLS server name a client expects is a SAN.
COORDINATOR_CN = "coordinator"
COORDINATOR_SERVER_NAME = "coordinator.flota"
NODE_CN_PREFIX = "node:"
ADMIN_CN_PREFIX = "admin:"
CA_SERVER_NAME = "ca.flota"  # the enrollment port serves the CA certificate itself


def parse_hostport(text: str, default_port: int, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` (default port) or `:PORT` (default host).
    Raises ValueError for anything else; port 0 is allowed (pick a free one)."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid address {text!r} (expected HOST:PORT)")
        port = rest[1:] if rest else str(default_port)
    elif text.count(":") > 1:  # a bare IPv6 address: no port
        host, port = text, str(default_port)
    else:
        host, _, port = text.partition(":") if ":" in text else (text, "", str(default_port))
    host = host or default_host
    if not port.isdigit() or not 0 <= int(port) < 65536 or any(c.isspace() or c in "[]" for c in host):
        raise ValueError(f"invalid address {text!r} (expected HOST:PORT)")
    return host, int(port)


def flota_home() -> Path:
    """Where the CLI and the daemons keep state: $FLOTA_HOME, else ~/.flota. The CLI finds
    the admin credentials a coordinator wrote here (`admin/`)."""
    return Path(os.environ.get("FLOTA_HOME") or Path.home() / ".flota")


def node_cn(node_id: str) -> str:
    return f"{NODE_CN_PREFIX}{node_id}"


def node_server_name(node_id: str) -> str:
    """The SAN a node's certificate carries; the coordinator dials nodes expecting it."""
    return f"{node_id}.node.flota"


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate in DER form, hex: what TXT `fp` and join tokens carry."""
    return hashlib.sha256(der).hexdigest()


TOKEN_PREFIX = "flota1"


class TokenError(ValueError):
    """A join token is not of the form flota1.<id>.<secret>.<ca-hash>."""


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A one-time join token: an id, a secret, and the fingerprint of the CA it pins."""

    id: str
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.id}.{self.secret}.{self.ca_fingerprint}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split(".")
        ok = (
            len(parts) == 4
            and parts[0] == TOKEN_PREFIX
            and re.fullmatch(r"[0-9a-f]{8}", parts[1]) is not None
            and re.fullmatch(r"[A-Za-z0-9_-]{16,64}", parts[2]) is not None
            and re.fullmatch(r"[0-9a-f]{64}", parts[3]) is not None
        )
        if not ok:
            raise TokenError("malformed join token (expected flota1.<id>.<secret>.<ca-hash>)")
        return cls(parts[1], parts[2], parts[3])


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value replaced by ``[secret NAME]``, longest first.
    The node applies it to what its jobs print, the coordinator to what it stores."""
    for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
        if value and value in text:
            text = text.replace(value, f"[secret {name}]")
    return text
