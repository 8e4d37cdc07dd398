"""Plain data the coordinator reasons about: no protobuf, no SQL.

The scheduler reads a `Snapshot` (immutable) and returns a `Plan`; `outcomes` reads jobs
and attempts and returns a `Decision`. Statuses are StrEnums whose values are the
lowercase strings the wire and the database carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from protos.contract import EndReason, ResultStatus

__all__ = [
    "ATTEMPT_ACTIVE",
    "AttemptStatus",
    "Cause",
    "EndReason",
    "Facts",
    "Finished",
    "Gpu",
    "Heartbeat",
    "JobStatus",
    "LocalModel",
    "LogLines",
    "Metered",
    "NodeEvent",
    "NodeInfo",
    "NodeJob",
    "NodeState",
    "PrunedRun",
    "Pruning",
    "RemoteRefs",
    "Reservation",
    "ResultStatus",
    "RunStatus",
    "Started",
    "Attempt",
    "Job",
    "JobPlacement",
    "NodeRecord",
    "Repo",
    "Result",
    "Run",
    "run_status",
    "shown_status",
    "JOB_FINAL",
    "JobView",
    "NodeView",
    "Placement",
    "Plan",
    "Snapshot",
]


class JobStatus(StrEnum):
    WAITING = "waiting"  # waiting on dependencies: not placeable until they have succeeded
    QUEUED = "queued"
    DISPATCHING = "dispatching"  # placed; its StartJob is on its way
    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"


class AttemptStatus(StrEnum):
    DISPATCHING = "dispatching"
    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"
    SUPERSEDED = "superseded"  # succeeded after another attempt of its job had


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # shown, never stored: running, but none of its jobs has a node now
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeState(StrEnum):
    """What the coordinator knows of a node's liveness (see fleet.liveness)."""

    UNKNOWN = "unknown"  # enrolled, not reached since this coordinator started
    ONLINE = "online"
    UNREACHABLE = "unreachable"
    LOST = "lost"  # unreachable too long: its attempts were given up
    OFFLINE = "offline"  # left gracefully


class Cause(StrEnum):
    """Who ended an attempt, and why: the retry and late-result rules read this, never
    the wording of the error."""

    NODE = ""  # the node's own result
    DISPATCH = "dispatch"  # its StartJob failed (network, deadline): retried, counted
    REFUSED = "refused"  # the node said busy or stopping: retried, counted apart
    REJECTED = "rejected"  # the node refused the spec, or a secret is gone: not retried
    LOST = "lost"  # the coordinator gave up on it (node lost, removed, or forgot it)
    UNREACHABLE = "unreachable"  # cancelled while its node could not be told

    @property
    def closed_here(self) -> bool:
        """The coordinator closed the attempt itself: the node's real result, arriving
        late, still has something to say."""
        return self in (Cause.DISPATCH, Cause.LOST, Cause.UNREACHABLE)


# Job statuses that never change again.
JOB_FINAL = frozenset(
    {
        JobStatus.SUCCESS,
        JobStatus.FAILED,
        JobStatus.TIMEOUT,
        JobStatus.CANCELLED,
        JobStatus.LOST,
        JobStatus.PARTIAL,
    }
)


@dataclass(frozen=True, slots=True)
class NodeView:
    """A schedulable node as the scheduler sees it at one instant."""

    id: str
    name: str
    network: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    slots: int = 1
    cpus: float = 1.0  # total cpus of the host
    memory_mb: int = 0  # total memory of the host
    gpus: int = 0
    used_slots: int = 0
    used_cpus: float = 0.0  # reserved by running jobs
    used_memory_mb: int = 0
    used_gpus: int = 0
    exclusive_busy: bool = False  # an exclusive job runs there: nothing else may
    run_counts: Mapping[str, int] = field(default_factory=dict)  # run id -> jobs of that run on the node
    agents: frozenset[str] = frozenset()  # agent CLIs installed
    load: float = 0.0  # 1-minute load average / cpus, a tie-breaker only
    # Local model servers with a capacity: "model:<model>" -> its server, and each
    # server's free slots (its slots less the jobs for its models running here).
    servers: Mapping[str, str] = field(default_factory=dict)
    server_free: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobView:
    """A queued job and its placement wishes."""

    id: str
    run_id: str
    order: float = 0.0  # submission order; lower goes first
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)  # every pair must be on the node
    node: str = ""  # pin: a node id or name
    networks: tuple[str, ...] = ()  # allowed network profiles; empty: any
    avoid_networks: tuple[str, ...] = ()
    exclusive: bool = False  # the node must be idle, and stays closed to others while it runs
    spread: bool = False  # hard: no two jobs of the run on one node
    agent_cli: str = ""  # an agent CLI the node must have; empty: none


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[NodeView, ...]
    queue: tuple[JobView, ...]
    # Known nodes left out of `nodes` (draining, offline, ...), by id and by name: why
    # each takes no work, so a job pinned to one says that, not "no node named".
    unavailable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class Plan:
    placements: tuple[Placement, ...] = ()
    # job id -> one line saying why it waits (only for jobs not placed)
    waiting: Mapping[str, str] = field(default_factory=dict)


# Attempt statuses while the attempt holds a slot on its node.
ATTEMPT_ACTIVE = frozenset({AttemptStatus.DISPATCHING, AttemptStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one active attempt holds on its node."""

    run_id: str
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    exclusive: bool = False
    requires: str = ""  # "model:<model>": it holds one of its model server's slots


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str = ""
    memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class LocalModel:
    model: str = ""  # a litellm model string
    api_base: str = ""
    slots: int = 0  # jobs its server (its api_base) takes at once; 0: not said, no limit


@dataclass(frozen=True, slots=True)
class Facts:
    """What a node measures about its machine; field names follow flota.v1.Facts."""

    cpu_count: int = 0
    load_1m: float = 0.0
    memory_total_mb: int = 0
    memory_available_mb: int = 0
    gpus: tuple[Gpu, ...] = ()
    disk_free_mb: int = 0
    on_battery: bool = False
    battery_percent: int = -1
    agent_clis: tuple[str, ...] = ()
    os: str = ""
    arch: str = ""
    hostname: str = ""
    local_models: tuple[LocalModel, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's own word about itself (its last heartbeat); names follow flota.v1.NodeInfo."""

    id: str = ""
    name: str = ""
    version: str = ""
    network: str = ""
    network_source: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    slots: int = 0
    facts: Facts = field(default_factory=Facts)
    addresses: tuple[str, ...] = ()
    running: int = 0
    unreachable_after_s: float = 0.0
    lost_after_s: float = 0.0
    protocol: int = 0  # 0: a node from before protocol numbers (it spoke 1)
    build: str = ""  # its wheel's stamped build; "": run from a source tree


@dataclass(frozen=True, slots=True)
class Metered:
    """What a job's metering proxy counted on its node (flota.v1.MeterUsage)."""

    calls: int = 0
    refused: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    priced: bool = True
    note: str = ""
    budget_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one attempt; field names follow flota.v1.JobResult. With
    ``metered``, tokens_in, tokens_out and cost_usd are the metering proxy's count."""

    status: ResultStatus
    exit_code: int = 0
    branch: str = ""
    base_commit: str = ""
    head_commit: str = ""
    files_modified: tuple[str, ...] = ()
    insertions: int = 0
    deletions: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    duration_s: float = 0.0
    error: str = ""
    log_tail: str = ""
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    node_id: str = ""
    model: str = ""
    log_lines_lost: int = 0
    check: str = ""  # passed | failed | "" (no check)
    answer: str = ""  # an agent's final answer
    reason: EndReason = EndReason.NONE  # why it ended so, where the status does not say
    log_lines_marked: int = 0  # of log_lines_lost, those the log marks where they went missing
    metered: Metered | None = None  # a job with a budget: what its node's metering proxy counted


@dataclass(frozen=True, slots=True)
class JobPlacement:
    """Placement wishes shared by every job of a run."""

    node: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    avoid_networks: tuple[str, ...] = ()
    exclusive: bool = False
    spread: bool = False
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class Repo:
    url: str
    base_ref: str
    base_commit: str


@dataclass(slots=True)
class Attempt:
    id: str
    job_id: str
    number: int
    node_id: str
    status: AttemptStatus
    branch: str
    created_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    cause: Cause = Cause.NODE


@dataclass(slots=True)
class Job:
    id: str
    run_id: str
    index: int
    name: str
    agent: str
    command: str
    status: JobStatus
    created_at: float
    updated_at: float
    prompt: str = ""
    model: str = ""
    timeout_s: float = 0.0
    max_attempts: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    placement: JobPlacement = field(default_factory=JobPlacement)
    repo: Repo | None = None
    wait_reason: str = ""
    node_id: str = ""
    branch: str = ""
    result: Result | None = None
    attempts: list[Attempt] = field(default_factory=list)
    cancel_requested: bool = False
    # Attempts numbered up to this one came before the user's last `flota retry`: they do
    # not count against max_attempts (a retried job has its full budget again).
    budget_from: int = 0
    resume_from_partial: bool = False  # a retry starts from an earlier attempt's pushed work
    secrets: tuple[str, ...] = ()  # names only; values are looked up at each dispatch
    max_steps: int = 0
    budget_usd: float = 0.0
    api_base: str = ""
    check: str = ""
    requires: str = ""  # an agent CLI the node must have, or "model:<model>" it must serve
    report_paths: Mapping[str, str] = field(default_factory=dict)
    allow_empty: bool = False  # a job that changed nothing still pushes its branch (an empty commit)
    # A run as a graph: the jobs (ids, same run) that must succeed before this one starts,
    # its role in the plan, and, once they have, what it starts from: (ref, commit) pairs,
    # the first its base, the others merged in on the node. Empty: the run's base.
    depends_on: tuple[str, ...] = ()
    role: str = ""
    bases: tuple[tuple[str, str], ...] = ()
    ignore_paths: tuple[str, ...] = ()  # an agent CLI's own files, kept out of the commit
    input: str = ""  # batch: its input text (flota run --inputs / --each), in $FLOTA_INPUT on the node
    input_path: str = ""  # batch: its input file, in the worktree (or written to the scratch directory)


@dataclass(slots=True)
class Run:
    id: str
    name: str
    status: RunStatus
    created_at: float
    finished_at: float = 0.0
    repo_url: str = ""
    base_commit: str = ""
    jobs: list[Job] = field(default_factory=list)
    budget_usd: float = 0.0  # batch: a total for all its jobs; 0: none
    spent_usd: float = 0.0  # what its ended attempts spent (summed from their results)
    reason: str = ""  # why it stopped short (its budget is spent), "" otherwise


@dataclass(slots=True)
class NodeRecord:
    """An enrolled node as the store remembers it."""

    id: str
    name: str
    fingerprint: str
    enrolled_at: float
    address: str = ""
    last_seen: float = 0.0
    removed: bool = False
    draining: bool = False
    unreachable_after_s: float = 0.0  # what the node asked for; 0: the coordinator's default
    lost_after_s: float = 0.0


@dataclass(slots=True)
class PrunedRun:
    """A run `flota prune` takes (or would take): the nodes that ran it, its refs on its remote."""

    run: Run
    nodes: list[str]  # node ids
    refs: list[str] = field(default_factory=list)
    forgotten: bool = False  # its rows are deleted
    kept: str = ""  # why not


@dataclass(slots=True)
class RemoteRefs:
    url: str
    refs: list[str] = field(default_factory=list)
    removed: int = 0
    error: str = ""  # the remote could not be listed or updated


@dataclass(slots=True)
class Pruning:
    """What a prune found (a dry run) or did."""

    dry_run: bool
    older_than_s: float
    runs: list[PrunedRun] = field(default_factory=list)
    remotes: list[RemoteRefs] = field(default_factory=list)
    worktrees_removed: int = 0
    node_refs_removed: int = 0
    nodes_unreachable: list[str] = field(default_factory=list)  # node ids


def run_status(job_statuses: list[str]) -> RunStatus:
    """A run is running until every job is final; then success only if all succeeded."""
    if not job_statuses or any(s not in JOB_FINAL for s in job_statuses):
        return RunStatus.RUNNING
    if all(s == JobStatus.SUCCESS for s in job_statuses):
        return RunStatus.SUCCESS
    if all(s in (JobStatus.SUCCESS, JobStatus.CANCELLED) for s in job_statuses):
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def shown_status(run: Run) -> RunStatus:
    """A run's status as users see it: a running run with queued jobs and none placed or
    running is "waiting" (for a node that can take them, see each job's wait reason)."""
    if run.status != RunStatus.RUNNING or not run.jobs:
        return RunStatus(run.status)
    statuses = {j.status for j in run.jobs}
    if JobStatus.QUEUED in statuses and not statuses & {JobStatus.DISPATCHING, JobStatus.RUNNING}:
        return RunStatus.WAITING
    return RunStatus.RUNNING


# --- what nodes say, decoded at the edge (convert.py) -------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    info: NodeInfo


@dataclass(frozen=True, slots=True)
class Started:
    attempt_id: str
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LogLines:
    attempt_id: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """An attempt's result, with the output no coordinator has seen yet."""

    attempt_id: str
    result: Result
    log_lines: tuple[str, ...] = ()


NodeEvent = Heartbeat | Started | LogLines | Finished


@dataclass(frozen=True, slots=True)
class NodeJob:
    """One job a node reports in ListJobs."""

    attempt_id: str
    finished: Finished | None = None  # its result and unsent output, once it has ended
