"""The memory limit an agent lives under, read from cgroup files (v1 and v2) as texts."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from edge_agent.cgroup import (
    CgroupMemory,
    find_hierarchy,
    headroom,
    inactive_file,
    parse_limit,
    read_cgroup_memory,
)

# what a Pi's systemd (cgroup2 only) and this project's build machine (v1 controllers) show
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_SELF = "0::/system.slice/fedmq-agent.service\n"
V1_MOUNTINFO = (
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V1_SELF = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n"


def test_a_pi_service_under_cgroup2() -> None:
    where = find_hierarchy(V2_SELF, V2_MOUNTINFO)
    assert where is not None and where.version == 2
    assert where.directory == PurePosixPath("/sys/fs/cgroup/system.slice/fedmq-agent.service")


def test_v1_memory_wins_over_a_cgroup2_mount_without_it() -> None:
    where = find_hierarchy(V1_SELF, V1_MOUNTINFO)
    assert where is not None and where.version == 1
    assert where.directory == PurePosixPath("/sys/fs/cgroup/memory/process_api/abc")


def test_a_namespaced_mount_shows_only_its_subtree() -> None:
    # a container sees its own cgroup as the mount's root
    mountinfo = "30 23 0:26 /kube/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    where = find_hierarchy("0::/kube/pod1/agent\n", mountinfo)
    assert where is not None and where.directory == PurePosixPath("/sys/fs/cgroup/agent")


def test_no_cgroup_mounted_is_no_limit() -> None:
    assert find_hierarchy(V2_SELF, "22 1 0:21 / /proc rw - proc proc rw\n") is None


@pytest.mark.parametrize(
    ("text", "want"),
    [("max\n", None), ("536870912\n", 512 << 20), ("9223372036854771712\n", None), ("", None)],
)
def test_limits_parse_and_huge_means_none(text: str, want: int | None) -> None:
    assert parse_limit(text) == want


def test_reclaimable_cache_does_not_count_against_the_limit() -> None:
    assert inactive_file("anon 100\ninactive_file 30\nactive_file 5\n", 2) == 30
    assert inactive_file("cache 9\ntotal_inactive_file 40\n", 1) == 40
    assert headroom(limit=100, usage=90, reclaimable=30) == 40
    assert headroom(limit=100, usage=150, reclaimable=10) == 0


def fake_v2(tmp_path: Path, levels: dict[str, tuple[str, int, int]]) -> Path:
    """A /proc and a cgroup2 tree under tmp_path; levels: dir -> (memory.max, current, cache)."""
    mount = tmp_path / "cg"
    (mount).mkdir()
    (mount / "cgroup.controllers").write_text("cpu memory pids\n")
    for rel, (limit, current, cache) in levels.items():
        d = mount / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{current}\n")
        (d / "memory.stat").write_text(f"anon 1\ninactive_file {cache}\n")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/cgroup").write_text("0::/" + max(levels, key=len) + "\n")
    (proc / "self/mountinfo").write_text(f"30 23 0:26 / {mount} rw - cgroup2 cgroup2 rw\n")
    return proc


def test_the_tightest_level_up_the_tree_binds(tmp_path: Path) -> None:
    mib = 1 << 20
    proc = fake_v2(tmp_path, {
        "system.slice": (str(300 * mib), 280 * mib, 0),  # the slice is nearly full
        "system.slice/fedmq.service": (str(512 * mib), 100 * mib, 10 * mib),
    })
    assert read_cgroup_memory(proc) == CgroupMemory(300 * mib, 20 * mib)


def test_an_unlimited_service_has_no_limit(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path, {"a": ("max", 5, 0), "a/b": ("max", 5, 0)})
    assert read_cgroup_memory(proc) is None
    assert read_cgroup_memory(tmp_path / "nowhere") is None
