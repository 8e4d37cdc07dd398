"""The wheels `flota node add` ships: flota's own wheel and what the node daemon needs, for
the host's platform, so the host needs no internet (`pip install --no-index` there).

Both are built on this machine from its own package index (`pip wheel`, `pip download`
with the host's platform tags) and cached under the user's cache directory
(`$XDG_CACHE_HOME/flota`, else `~/.cache/flota`): flota's wheel by a hash of its source,
the dependencies by the requirements and the platform. The node daemon needs only
`NODE_PACKAGES` (what node_agent/ and protos/ import); the llm agent's `LLM_PACKAGES`
(litellm) are added with `--with llm`.

Error handling: a wheel this machine's index does not have for the host's platform is a
`CliError` naming the package and `--online` (the host's own pip then fetches them).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cli import __version__
from cli.client import CliError
from cli.install.preflight import Facts, Python
from protos.contract import BUILD_MODULE
from protos.contract import build as stamped_build

__all__ = [
    "LLM_PACKAGES",
    "NODE_PACKAGES",
    "Wheelhouse",
    "build",
    "cache_dir",
    "local_build",
    "platform_tags",
    "requirements",
    "source_hash",
]

# What the node daemon imports beyond the standard library (tests/cli/test_install_pure.py
# checks this against node_agent/ and protos/), and what the llm agent adds.
NODE_PACKAGES = ("grpcio", "protobuf", "zeroconf", "psutil", "cryptography")
LLM_PACKAGES = ("litellm",)
EXTRAS = {"llm": LLM_PACKAGES}
SOURCE_PACKAGES = ("protos", "coordinator", "node_agent", "cli")
_SOURCE_SUFFIXES = (".py", ".pyi", ".proto", ".typed")
_MISSING_RE = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "flota"


def source_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "node_agent").is_dir():
        raise CliError(
            f"flota node add builds flota's wheel from its source, and {root} has none: run the flota "
            "of a source checkout (pip install -e DIR)"
        )
    return root


def _source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    for package in SOURCE_PACKAGES:
        files += sorted(
            p
            for p in (root / package).rglob("*")
            if p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts
        )
    return [f for f in files if f.is_file()]


def source_hash(root: Path) -> str:
    """The build id: a hash of every file that goes into flota's wheel."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def local_build() -> str:
    """The build this CLI would install: its own stamp, or its source's digest ("" when
    it has neither)."""
    stamp = stamped_build()
    if stamp:
        return stamp
    try:
        return source_hash(source_root())
    except CliError:
        return ""


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, timeout=1800
        )
    except subprocess.TimeoutExpired:
        raise CliError(f"{what}: pip took over 30 minutes") from None


def _flota_wheel(root: Path, build_id: str) -> Path:
    out = cache_dir() / "wheels" / f"stamped-{build_id}"
    found = sorted(out.glob("flota-*.whl")) if out.is_dir() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="flota-wheel-") as tmp:
        src = Path(tmp) / "src"
        for path in _source_files(root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        # The daemon reports this (protos/contract.py build()): `upgrade` waits for it.
        stamp = src / (BUILD_MODULE.replace(".", "/") + ".py")
        stamp.write_text(f'"""The build of this wheel (flota node add)."""\n\nBUILD = "{build_id}"\n')
        built = Path(tmp) / "out"
        res = _pip(
            ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(built), str(src)], "flota's wheel"
        )
        wheels = sorted(built.glob("flota-*.whl"))
        if res.returncode != 0 or not wheels:
            raise CliError(f"cannot build flota's wheel: {_last_error(res.stderr or res.stdout)}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheels[0], out / wheels[0].name)
    return out / wheels[0].name


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "is ignored: it is neither" not in ln]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["pip failed"])[-1]


def requirements(extras: tuple[str, ...], online: bool) -> list[str]:
    """The node's packages, pinned to the versions this machine runs (the node then runs
    what was tested here), else as flota requires them. `online`: only pip itself."""
    names = [n for n in NODE_PACKAGES] + [n for e in extras for n in EXTRAS[e]]
    wanted = {}
    project = tomllib.loads((source_root() / "pyproject.toml").read_text())["project"]
    for spec in project.get("dependencies", []):
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower()
        wanted[name] = spec.split(";")[0].strip()
    reqs = ["pip"]
    if online:
        return reqs
    for name in names:
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(wanted.get(name, name))
    return reqs


def platform_tags(facts: Facts, py: Python) -> list[str]:
    """pip's --platform values for the host: what its Python can install."""
    arch = py.machine or facts.arch
    if facts.os == "Darwin":
        major, _, minor = (py.mac or "11.0").partition(".")
        arch = "arm64" if arch in ("arm64", "aarch64") else "x86_64"
        tags = []
        for v in range(int(major), 10, -1):
            tags += [f"macosx_{v}_0_{arch}", f"macosx_{v}_0_universal2"]
        top = int(minor.partition(".")[0] or 0) if int(major) == 10 else 16
        for m in range(top, 8, -1):
            tags += [f"macosx_10_{m}_{arch}", f"macosx_10_{m}_universal2"]
        return tags
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
    if py.libc[0] == "glibc":
        major, _, minor = py.libc[1].partition(".")
        top = int(minor) if major == "2" and minor.isdigit() else 17
        tags = [f"manylinux_2_{m}_{arch}" for m in range(top, 16, -1)]
        tags += [f"manylinux2014_{arch}"]
        if arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return tags
    return [f"musllinux_1_{m}_{arch}" for m in (2, 1)]


@dataclass(frozen=True)
class Wheelhouse:
    flota: Path  # flota's wheel
    deps: Path  # a directory of wheels
    requirements: tuple[str, ...]
    build: str
    version: str
    cached: bool  # nothing had to be built or downloaded

    def files(self) -> list[Path]:
        return [self.flota, *sorted(p for p in self.deps.glob("*.whl"))]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())


def describe(facts: Facts, py: Python) -> str:
    libc = f", {py.libc[0]} {py.libc[1]}" if py.libc[0] else ""
    return f"{facts.os} {py.machine or facts.arch}, CPython {py.short}{libc}"


def build(facts: Facts, py: Python, extras: tuple[str, ...], online: bool) -> Wheelhouse:
    """flota's wheel and the wheels the node needs, for the host's Python (cached)."""
    root = source_root()
    build_id = source_hash(root)
    had_wheel = (cache_dir() / "wheels" / f"stamped-{build_id}").is_dir()
    wheel = _flota_wheel(root, build_id)
    reqs = requirements(extras, online)
    tags = platform_tags(facts, py)
    abi = f"cp{py.version[0]}{py.version[1]}"
    key = hashlib.sha256(json.dumps([reqs, tags, abi]).encode()).hexdigest()[:16]
    deps = cache_dir() / "wheelhouse" / key
    cached = had_wheel and (deps / ".complete").is_file()
    if not (deps / ".complete").is_file():
        deps.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=deps.parent))
        args = ["download", "-q", "-d", str(tmp), "--only-binary=:all:"]
        args += ["--python-version", py.short, "--implementation", "cp", "--abi", abi]
        args += [a for t in tags for a in ("--platform", t)]
        res = _pip([*args, *reqs], "the node's wheels")
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            missing = _MISSING_RE.search(res.stderr or "")
            if missing:
                raise CliError(
                    f"this machine's package index has no wheel of {missing.group(1)} for the host "
                    f"({describe(facts, py)}): pass --online to let the host's pip fetch the node's "
                    "packages itself"
                )
            raise CliError(f"cannot gather the node's wheels: {_last_error(res.stderr or res.stdout)}")
        (tmp / ".complete").write_text(json.dumps({"requirements": reqs, "platforms": tags, "abi": abi}))
        shutil.rmtree(deps, ignore_errors=True)
        os.replace(tmp, deps)
    return Wheelhouse(wheel, deps, tuple(reqs), build_id, __version__, cached)
