import os
import subprocess
import sys
from pathlib import Path

import pytest

from ft_models.ram import Ram, peak_rss_bytes, process_tree, ram, rss_bytes, tree_rss_bytes

GB = 10**9
V1_UNLIMITED = 9223372036854771712


def _machine(
    tmp_path: Path,
    cgroup: str | None,
    *,
    total_kib: int = 16_000_000,
    available_kib: int = 12_000_000,
) -> tuple[Path, Path]:
    """A fake /proc (meminfo, self/cgroup) and an empty /sys/fs/cgroup under tmp_path."""
    proc, sys_cgroup = tmp_path / "proc", tmp_path / "sys" / "fs" / "cgroup"
    (proc / "self").mkdir(parents=True)
    sys_cgroup.mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       {total_kib} kB\nMemFree:         1000000 kB\n"
        f"MemAvailable:   {available_kib} kB\nCached:          2000000 kB\n"
    )
    if cgroup is not None:
        (proc / "self" / "cgroup").write_text(cgroup)
    return proc, sys_cgroup


def _cgroup(folder: Path, **files: str | int) -> None:
    """Write cgroup files: memory_max="max" writes memory.max; stat= writes memory.stat."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name.replace("_", ".", 1)).write_text(f"{value}\n")


def test_no_cgroup_is_memavailable(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, None)

    assert ram(proc=proc, cgroup_root=sys_cgroup) == Ram(
        16_000_000 * 1024, 12_000_000 * 1024, "MemAvailable", cgroup_limit_bytes=None
    )
    # A /proc/self/cgroup without a memory controller, and a v2 root without memory.max.
    (proc / "self" / "cgroup").write_text("3:cpu,cpuacct:/\n0::/\n")
    assert ram(proc=proc, cgroup_root=sys_cgroup).source == "MemAvailable"


def test_kernel_without_memavailable(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, None)
    (proc / "meminfo").write_text("MemTotal: 8000 kB\nMemFree: 1000 kB\nCached: 2000 kB\n")

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    assert (memory.total_bytes, memory.available_bytes) == (8000 * 1024, 3000 * 1024)
    assert memory.source == "MemFree + Cached"


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "9:pids:/\n4:memory:/job/abc\n1:cpu:/\n0::/\n")
    root = sys_cgroup / "memory"
    _cgroup(root, memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=20 * GB)
    _cgroup(
        root / "job" / "abc",
        memory_limit_in_bytes=8 * GB,
        memory_usage_in_bytes=3 * GB,
        # total_ counts the whole subtree, as usage_in_bytes does; the other is this level's.
        memory_stat=f"inactive_file 5\ntotal_inactive_file {GB}",
    )

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    assert memory == Ram(8 * GB, 6 * GB, "cgroup v1 limit 8.0 GB", cgroup_limit_bytes=8 * GB)


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "4:memory:/job\n")
    root = sys_cgroup / "memory"
    _cgroup(root, memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=20 * GB)
    _cgroup(root / "job", memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=GB)

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    assert memory.source == "MemAvailable"
    assert memory.cgroup_limit_bytes is None
    assert memory.available_bytes == 12_000_000 * 1024


def test_cgroup_v1_path_not_visible_reads_the_mount_root(tmp_path: Path) -> None:
    # In a container the host's path is named, and the container's cgroup is the mount root.
    proc, sys_cgroup = _machine(tmp_path, "4:memory:/docker/0123abcd\n")
    _cgroup(sys_cgroup / "memory", memory_limit_in_bytes=4 * GB, memory_usage_in_bytes=GB // 2)

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    assert (memory.total_bytes, memory.available_bytes) == (4 * GB, 4 * GB - GB // 2)
    assert memory.source == "cgroup v1 limit 4.0 GB"


def test_cgroup_v2_parent_limit_applies(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "0::/user.slice/job.scope\n")
    _cgroup(sys_cgroup, memory_current=30 * GB)  # the root has no memory.max
    _cgroup(sys_cgroup / "user.slice", memory_max=4 * GB, memory_current=3 * GB)
    _cgroup(
        sys_cgroup / "user.slice" / "job.scope",
        memory_max=10 * GB,
        memory_current=2 * GB + GB // 2,
        memory_stat="anon 2500000000\ninactive_file 0",
    )

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    # The child alone leaves 7.5 GB; its parent, 1 GB.
    assert memory == Ram(4 * GB, GB, "cgroup v2 limit 4.0 GB", cgroup_limit_bytes=4 * GB)


def test_cgroup_v2_total_is_the_lowest_limit_even_where_a_parent_is_fuller(
    tmp_path: Path,
) -> None:
    proc, sys_cgroup = _machine(tmp_path, "0::/slice/job\n")
    _cgroup(sys_cgroup / "slice", memory_max=10 * GB, memory_current=9 * GB + GB // 2)
    _cgroup(sys_cgroup / "slice" / "job", memory_max=8 * GB, memory_current=GB)

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    # The job's siblings have filled its parent: 0.5 GB left there, under the job's own 7 GB.
    assert memory == Ram(8 * GB, GB // 2, "cgroup v2 limit 10.0 GB", cgroup_limit_bytes=8 * GB)


def test_cgroup_v2_reclaimable_page_cache_counts_as_free(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "0::/job\n")
    job = sys_cgroup / "job"
    _cgroup(job, memory_max=6 * GB, memory_current=5 * GB, memory_stat=f"inactive_file {2 * GB}")

    assert ram(proc=proc, cgroup_root=sys_cgroup).available_bytes == 3 * GB
    (job / "memory.stat").write_text("anon 1\n")
    assert ram(proc=proc, cgroup_root=sys_cgroup).available_bytes == GB
    (job / "memory.max").write_text("max\n")
    assert ram(proc=proc, cgroup_root=sys_cgroup).source == "MemAvailable"


def test_memavailable_below_the_cgroup_headroom_is_the_source(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "0::/job\n", available_kib=1_000_000)
    _cgroup(sys_cgroup / "job", memory_max=8 * GB, memory_current=GB)

    memory = ram(proc=proc, cgroup_root=sys_cgroup)

    # The host is short of memory before the cgroup is: the limit still caps the total.
    assert memory == Ram(8 * GB, 1_000_000 * 1024, "MemAvailable", cgroup_limit_bytes=8 * GB)


def test_hybrid_host_reads_memory_from_v1(tmp_path: Path) -> None:
    proc, sys_cgroup = _machine(tmp_path, "4:memory:/job\n0::/job\n")
    _cgroup(sys_cgroup / "memory" / "job", memory_limit_in_bytes=2 * GB, memory_usage_in_bytes=0)
    _cgroup(sys_cgroup / "job", memory_max=GB // 2, memory_current=0)  # v2 has no memory here

    assert ram(proc=proc, cgroup_root=sys_cgroup).source == "cgroup v1 limit 2.0 GB"


# -- processes --------------------------------------------------------------------------------


def _process(proc: Path, pid: int, rss_kib: int | None, *, children: dict[int, str]) -> None:
    """/proc/<pid>: status with VmRSS/VmHWM (none: the process has exited), and a children file
    per thread ({tid: "101 102"})."""
    (proc / str(pid)).mkdir(parents=True)
    if rss_kib is not None:
        (proc / str(pid) / "status").write_text(
            f"Name:\tpython\nVmHWM:\t{2 * rss_kib} kB\nVmRSS:\t{rss_kib} kB\nThreads:\t1\n"
        )
    for tid, text in children.items():
        task = proc / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{tid} (python) S {pid}\n")
        (task / "children").write_text(text)


def test_rss_of_a_process_tree(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    # 100 has two threads; 101 (a torchrun worker) has a child of its own; 103 has exited.
    _process(proc, 100, 1000, children={100: "101 102 ", 107: "103 "})
    _process(proc, 101, 200, children={101: "104 "})
    _process(proc, 102, 30, children={102: ""})
    _process(proc, 103, None, children={})
    _process(proc, 104, 4, children={104: ""})
    _process(proc, 200, 99999, children={200: ""})  # not in the tree

    assert rss_bytes(100, proc=proc) == 1000 * 1024
    assert peak_rss_bytes(100, proc=proc) == 2000 * 1024
    assert process_tree(100, proc=proc) == [100, 101, 102, 103, 104]
    assert tree_rss_bytes(100, proc=proc) == (1000 + 200 + 30 + 4) * 1024
    assert tree_rss_bytes(102, proc=proc) == 30 * 1024
    with pytest.raises(ProcessLookupError, match="no process 103"):
        rss_bytes(103, proc=proc)
    assert peak_rss_bytes(103, proc=proc) is None


def test_tree_without_children_files(tmp_path: Path) -> None:
    # A kernel without CONFIG_PROC_CHILDREN: parents come from each /proc/<pid>/stat.
    proc = tmp_path / "proc"
    for pid, ppid, comm in ((100, 1, "ft"), (101, 100, "a) b (c"), (102, 101, "w"), (103, 1, "x")):
        (proc / str(pid) / "task" / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "task" / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid}\n")
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0\n")
        (proc / str(pid) / "status").write_text(f"VmRSS:\t{pid} kB\n")

    assert process_tree(100, proc=proc) == [100, 101, 102]
    assert tree_rss_bytes(100, proc=proc) == (100 + 101 + 102) * 1024


def test_this_machine() -> None:
    memory = ram()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        own, tree = rss_bytes(), tree_rss_bytes()
        members = process_tree()
    finally:
        child.kill()
        child.wait()

    print(memory)
    assert 0 < memory.available_bytes <= memory.total_bytes
    assert memory.source
    assert own > 10 * 2**20
    assert tree >= own
    assert members[0] == os.getpid()
    assert child.pid in members
    peak = peak_rss_bytes()
    assert peak is not None and peak >= own
