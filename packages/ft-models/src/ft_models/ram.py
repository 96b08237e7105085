"""How much RAM this process may use, and how much it and its children use now.

`ram()` is the one reader of the machine's RAM in ft: `memory_info()`, `ft doctor` and the
training orchestrator's checks all go through it. In a container or a systemd slice the
kernel's out-of-memory killer acts at the cgroup's limit, whatever the host has, so the limit
of this process's cgroup (and of each cgroup above it: a parent's limit applies too) caps what
/proc/meminfo says. Both cgroup versions are read: v2 (`memory.max`, one tree) and v1
(`memory.limit_in_bytes`, the `memory` controller's own tree), which older hosts still run.

`rss_bytes`, `tree_rss_bytes` and `peak_rss_bytes` read a process's resident set size: what
`MemoryWatchdog` samples. Linux is read from /proc; macOS from sysctl, vm_stat and ps (no
psutil). Every reader takes its roots as parameters so tests point it at a fake tree.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned int64 (9223372036854771712).
_V1_UNLIMITED = 2**62


@attrs.frozen
class Ram:
    """The RAM this process may use, in bytes, and what bounds it."""

    total_bytes: int
    """Physical RAM, or the cgroup limit when that is lower."""
    available_bytes: int
    """What the process may still allocate: the lower of MemAvailable and the cgroup's limit
    less its usage (page cache the kernel can drop counts as free)."""
    source: str
    """What set `available_bytes`, for messages: "MemAvailable", "cgroup v1 limit 8.0 GB"."""
    cgroup_limit_bytes: int | None = None
    """The lowest cgroup memory limit over this process's cgroup and its parents; None when
    none is set."""


def ram(*, proc: Path = PROC, cgroup_root: Path = CGROUP_ROOT) -> Ram:
    """Total and available RAM for this process, capped by its cgroup's memory limit.

    `proc` and `cgroup_root` are where /proc and /sys/fs/cgroup are (tests pass fake trees).
    Without /proc/meminfo (macOS) the numbers come from sysctl and vm_stat.
    """
    if not (proc / "meminfo").exists():
        total, available = _sysctl_memory()
        return Ram(total, available, "vm_stat")
    total, available, source = _meminfo(proc / "meminfo")
    cgroup = _cgroup_memory(proc / "self" / "cgroup", cgroup_root)
    if cgroup is None:
        return Ram(total, available, source)
    limit, headroom, where = cgroup
    if headroom < available:
        available, source = headroom, where
    return Ram(min(total, limit), available, source, cgroup_limit_bytes=limit)


def _meminfo(path: Path) -> tuple[int, int, str]:
    fields: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024  # the file says kB and means KiB
    if "MemAvailable" in fields:
        return fields["MemTotal"], fields["MemAvailable"], "MemAvailable"
    # Kernels before 3.14 have no MemAvailable.
    free = fields.get("MemFree", 0) + fields.get("Cached", 0)
    return fields["MemTotal"], free, "MemFree + Cached"


def _cgroup_memory(cgroup_file: Path, root: Path) -> tuple[int, int, str] | None:
    """(lowest limit, least headroom, "cgroup vN limit X GB" of the level with the least
    headroom) over this process's cgroup and its parents, or None when no level sets a limit.
    Headroom is a level's limit less its usage: a parent's siblings can leave it less room
    than a child with a lower limit has."""
    try:
        lines = cgroup_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "" and line.startswith("0:"):
            v2 = path
    # On a hybrid host (v1 controllers and an empty v2 tree) memory is v1's.
    if v1 is not None:
        version, base, path = 1, root / "memory", v1
        limit_file, usage_file, inactive = (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        )
    elif v2 is not None:
        version, base, path = 2, root, v2
        limit_file, usage_file, inactive = "memory.max", "memory.current", "inactive_file"
    else:
        return None
    lowest: int | None = None
    tightest: tuple[int, str] | None = None
    for level in _levels(base, path):
        limit = _read_int(level / limit_file)
        if limit is None or limit >= _V1_UNLIMITED:  # v2 writes "max" for no limit
            continue
        usage = _read_int(level / usage_file) or 0
        # Page cache the kernel drops before it kills anyone is not in the way.
        usage -= min(usage, _stat(level / "memory.stat").get(inactive, 0))
        headroom = max(0, limit - usage)
        lowest = limit if lowest is None else min(lowest, limit)
        if tightest is None or headroom < tightest[0]:
            tightest = (headroom, f"cgroup v{version} limit {limit / 1e9:.1f} GB")
    if lowest is None or tightest is None:
        return None
    return lowest, *tightest


def _levels(base: Path, path: str) -> list[Path]:
    """The cgroup folder at `path` under `base` and each parent up to `base`, or `base` alone
    when the path is not visible: in a container /proc/self/cgroup names the host's path while
    the container's own cgroup is mounted at the root."""
    parts = [part for part in path.strip("/").split("/") if part]
    here = base.joinpath(*parts)
    if ".." in parts or not here.is_dir():
        return [base]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines)
    return {f[0]: int(f[1]) for f in fields if len(f) == 2 and f[1].isdigit()}


def _sysctl_memory() -> tuple[int, int]:
    """macOS: total from `hw.memsize`, available as free + inactive + purgeable pages."""
    total = int(_run(["sysctl", "-n", "hw.memsize"]) or 0)
    if not total:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    stats = _run(["vm_stat"]) or ""
    page = 16384 if sys.platform == "darwin" and platform.machine() == "arm64" else 4096
    pages = 0
    for line in stats.splitlines():
        if "page size of" in line:
            page = int(line.split("page size of")[1].split()[0])
        name, _, value = line.partition(":")
        if name.strip() in ("Pages free", "Pages inactive", "Pages purgeable", "Pages speculative"):
            pages += int(value.strip().rstrip("."))
    return total, (pages * page) or total


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# -- processes --------------------------------------------------------------------------------


def rss_bytes(pid: int | None = None, *, proc: Path = PROC) -> int:
    """The resident set size of process `pid` (default: this one). Raises ProcessLookupError
    when there is no such process."""
    pid = os.getpid() if pid is None else pid
    if proc.is_dir():
        kib = _status_kib(proc / str(pid) / "status", "VmRSS")
        found = None if kib is None else kib * 1024
    else:
        found = _ps_table().get(pid, (0, None))[1]
    if found is None:
        raise ProcessLookupError(f"no process {pid}")
    return found


def peak_rss_bytes(pid: int | None = None, *, proc: Path = PROC) -> int | None:
    """The highest resident set size process `pid` (default: this one) has had (Linux's
    VmHWM), or None where the OS does not say (another process on macOS)."""
    pid = os.getpid() if pid is None else pid
    if proc.is_dir():
        kib = _status_kib(proc / str(pid) / "status", "VmHWM")
        return None if kib is None else kib * 1024
    if pid == os.getpid():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS says bytes
    return None


def process_tree(pid: int | None = None, *, proc: Path = PROC) -> list[int]:
    """Process `pid` (default: this one) and all its descendants, parents first."""
    pid = os.getpid() if pid is None else pid
    if proc.is_dir():
        return _tree(pid, lambda parent: _children(parent, proc))
    return _tree(pid, _ps_children(_ps_table()))


def tree_rss_bytes(pid: int | None = None, *, proc: Path = PROC) -> int:
    """The resident set size of process `pid` (default: this one) plus all its descendants:
    for `ft train`, the trainer and its torchrun workers. A page that processes share counts
    once per process, so the sum is at or above what they hold together."""
    pid = os.getpid() if pid is None else pid
    if not proc.is_dir():
        table = _ps_table()
        tree = _tree(pid, _ps_children(table))
        return sum(table[member][1] for member in tree if member in table)
    total = 0
    for member in process_tree(pid, proc=proc):
        kib = _status_kib(proc / str(member) / "status", "VmRSS")
        total += (kib or 0) * 1024  # a child that exited since the walk holds nothing
    return total


def _tree(pid: int, children: Callable[[int], list[int]]) -> list[int]:
    tree, seen = [pid], {pid}
    for parent in tree:  # grows while it is walked: breadth first
        for child in children(parent):
            if child not in seen:
                seen.add(child)
                tree.append(child)
    return tree


def _children(pid: int, proc: Path) -> list[int]:
    """Children of `pid`, from /proc/<pid>/task/*/children (one file per thread)."""
    children: list[int] = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return children  # the process has exited
    for task in tasks:
        try:
            children.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            if (task / "stat").exists():  # a kernel built without CONFIG_PROC_CHILDREN
                return _children_from_stat(pid, proc)
        except OSError:
            continue  # the thread ended while we looked
    return children


def _children_from_stat(pid: int, proc: Path) -> list[int]:
    children = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _status_kib(path: Path, field: str) -> int | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _ps_table() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, RSS in bytes)} of every process, from `ps` (macOS)."""
    table = {}
    for line in (_run(["ps", "-A", "-o", "pid=,ppid=,rss="]) or "").splitlines():
        pid, ppid, kib = (int(field) for field in line.split())
        table[pid] = (ppid, kib * 1024)
    return table


def _ps_children(table: dict[int, tuple[int, int]]) -> Callable[[int], list[int]]:
    return lambda parent: [pid for pid, (ppid, _) in table.items() if ppid == parent]
