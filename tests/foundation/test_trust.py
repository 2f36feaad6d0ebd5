"""Shared segments and files are trusted by owner and mode, never by name (a second local user plants data).

The "intruder" is a forked child that drops to another uid (created with ``useradd`` when possible) and plants,
under the victim's own segment names, a cache tier holding a pickle that would create a file when unpickled, a
pool, and a balancer table. The victim (this process, root) must refuse all three unread: a TrustError, the file
never created. The fork happens after every module is imported, so the child needs no access to the checkout.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sutazai_hwopt.balancer.shared as lb_shared
import sutazai_hwopt.cache.l3
import sutazai_hwopt.cache.shared_index
import sutazai_hwopt.cache.system
import sutazai_hwopt.memory.manager  # noqa: F401  (imported before the fork: the child cannot read the checkout)
from sutazai_hwopt import IntelligentCacheSystem, MemoryPoolManager
from sutazai_hwopt.errors import HwoptError, TrustError
from sutazai_hwopt.shm import (
    SHM_DIR,
    attach_segment,
    close_quietly,
    create_segment,
    list_segment_names,
    segment_name,
    share_namespace,
    unlink_segment,
    unshare_namespace,
)
from sutazai_hwopt.testing import throwaway_namespace
from sutazai_hwopt.trust import private_dir

INTRUDER = "hwopt-test-intruder"
FALLBACK_UID = 54321
SHARE_GID = 54322


@pytest.fixture(scope="module")
def intruder_uid() -> Iterator[int]:
    """A second local user: created with useradd (removed afterwards), or a bare unused uid without it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (CI runs as root)")
    created = False
    if shutil.which("useradd"):
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
                           capture_output=True, text=True)
        created = r.returncode == 0
    try:
        import pwd

        try:
            uid = pwd.getpwnam(INTRUDER).pw_uid
        except KeyError:
            uid = FALLBACK_UID
        yield uid
    finally:
        if created:
            subprocess.run(["userdel", INTRUDER], capture_output=True)


def as_user(uid: int, work: Callable[[], None], *, groups: tuple[int, ...] = (), gid: int | None = None) -> None:
    """Run ``work`` in a forked child whose real and effective ids are ``uid`` (and ``gid``); assert it succeeded."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups(list(groups))
            os.setgid(gid if gid is not None else uid)
            os.setuid(uid)
            work()
            code = 0
        except BaseException as exc:
            os.write(2, f"intruder failed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the intruder's process failed"


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that planted code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def pretend_victim(victim_uid: int) -> None:
    """In the intruder's child: name segments as the victim would (its uid in the names), to plant under them."""
    os.geteuid = lambda: victim_uid  # type: ignore[assignment]


def test_planted_cache_tier_is_refused_unread(intruder_uid: int, tmp_path: Path) -> None:
    marker = str(tmp_path / "pwned")
    victim = os.geteuid()
    with throwaway_namespace("trust") as ns:
        def plant() -> None:
            pretend_victim(victim)
            c = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                        "enable_prefetch": False})
            # a pickle stream that creates a file when loaded, under a key the agents read
            c.put("prompt:1", Payload(marker), "agent_evil")
            c.close()

        as_user(intruder_uid, plant)
        planted = os.path.join(SHM_DIR, segment_name(ns, "cache", "l2"))
        assert os.stat(planted).st_uid == intruder_uid           # the intruder created the victim's name first
        with pytest.raises(TrustError) as err:
            IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                    "enable_prefetch": False})
        assert isinstance(err.value, PermissionError) and isinstance(err.value, HwoptError)
        assert ns in str(err.value) and str(intruder_uid) in str(err.value)
        assert not os.path.exists(marker)
    assert not os.path.exists(marker)


def test_intruders_own_namespace_never_collides(intruder_uid: int, tmp_path: Path) -> None:
    """Without impersonation, the intruder's segments carry its own uid: the victim gets a namespace of its own."""
    marker = str(tmp_path / "pwned")
    with throwaway_namespace("trust") as ns:
        def plant() -> None:
            c = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                        "enable_prefetch": False})
            c.put("prompt:1", Payload(marker), "agent_evil")
            c.close()

        as_user(intruder_uid, plant)
        theirs = [n for n in os.listdir(SHM_DIR) if f".u{intruder_uid}.{ns}." in n]
        try:
            assert theirs, "the intruder's tier should exist under its own uid"
            mine = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                           "enable_prefetch": False})
            try:
                assert mine.get("prompt:1", "agent_001") == (None, None)
            finally:
                mine.destroy()
        finally:
            for n in theirs:
                os.unlink(os.path.join(SHM_DIR, n))
    assert not os.path.exists(marker)


def test_planted_pool_is_refused_unread(intruder_uid: int) -> None:
    victim = os.geteuid()
    with throwaway_namespace("trust") as ns:
        def plant() -> None:
            pretend_victim(victim)
            with MemoryPoolManager(namespace=ns) as pm:
                pm.create_pool("model_weights", size=1 << 20)
                pm.put_array("agent_evil", np.arange(16, dtype=np.float32), pool_id="model_weights")

        as_user(intruder_uid, plant)
        with MemoryPoolManager(namespace=ns) as pm:
            assert pm.pools() == ["model_weights"]          # listing reads no segment
            with pytest.raises(TrustError, match="model_weights"):
                pm.stats("model_weights")
            with pytest.raises(TrustError):
                pm.allocate_memory("agent_001", 4096, pool_id="model_weights")


def test_planted_balancer_table_is_refused_unread(intruder_uid: int) -> None:
    victim = os.geteuid()
    table = f"trust-lb-{uuid.uuid4().hex[:8]}"

    def plant() -> None:
        pretend_victim(victim)
        s = lb_shared.SharedState.create(table, slots=8)
        s.publish_ejection("agent_001", 1e9)              # would eject a healthy backend for decades
        s.close()

    name = segment_name(table, "lb", "table")
    try:
        as_user(intruder_uid, plant)
        with pytest.raises(TrustError, match=table):
            lb_shared.SharedState.attach(table)
    finally:
        unlink_segment(name)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_our_segment_with_group_or_other_bits_is_refused(mode: int) -> None:
    with throwaway_namespace("trust") as ns:
        name = segment_name(ns, "pool", "open")
        seg = create_segment(name, 1 << 16)
        close_quietly(seg)
        os.chmod(os.path.join(SHM_DIR, name), mode)
        with pytest.raises(TrustError, match="mode"):
            attach_segment(name)
        os.chmod(os.path.join(SHM_DIR, name), 0o600)
        close_quietly(attach_segment(name))                # the same segment, private again, is accepted


def test_symlink_in_place_of_a_segment_is_refused(tmp_path: Path) -> None:
    with throwaway_namespace("trust") as ns:
        target = tmp_path / "elsewhere"
        target.write_bytes(b"\0" * 4096)
        name = segment_name(ns, "pool", "link")
        os.symlink(target, os.path.join(SHM_DIR, name))
        with pytest.raises(TrustError):
            attach_segment(name)
        assert list_segment_names(ns) == [name]


def test_created_segments_are_private() -> None:
    with throwaway_namespace("trust") as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("p", size=1 << 20)
        for n in list_segment_names(ns):
            st = os.stat(os.path.join(SHM_DIR, n))
            assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
        pm.destroy_pool("p")


def test_directories_in_shared_places(tmp_path: Path, intruder_uid: int) -> None:
    """Runtime, L3 and state directories: ours and not writable by others, or refused."""
    from sutazai_hwopt.cache.l3 import L3Tier

    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(TrustError, match="mode"):
        private_dir(open_dir, "L3 directory")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, intruder_uid, intruder_uid)
    os.chmod(theirs, 0o700)
    with pytest.raises(TrustError, match=str(intruder_uid)):
        private_dir(theirs, "runtime directory")
    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)
    private_dir(readable, "state directory")              # ours, only readable by others: tightened
    assert stat.S_IMODE(os.stat(readable).st_mode) == 0o700
    with throwaway_namespace("trust") as ns:
        with pytest.raises(TrustError):
            L3Tier(ns, 4 << 20, directory=str(theirs))
        assert list_segment_names(ns) == []                 # refused before its shared segment was made


def test_group_share_is_an_explicit_opt_in(intruder_uid: int, tmp_path: Path) -> None:
    """A declared group share: members' pools are readable; their pickles are still refused by default."""
    victim = os.geteuid()
    marker = str(tmp_path / "pwned")
    with throwaway_namespace("trust") as ns:
        share_namespace(ns, SHARE_GID, owners=[victim, intruder_uid])
        try:
            def member() -> None:
                share_namespace(ns, SHARE_GID, owners=[victim, intruder_uid])
                with MemoryPoolManager(namespace=ns) as pm:
                    pm.create_pool("shared", size=1 << 20)
                    pm.put_array("agent_member", np.arange(8, dtype=np.int64), pool_id="shared")
                c = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                            "enable_prefetch": False})
                c.put("obj", Payload(marker), "agent_member")
                c.put("text", "plain text is safe", "agent_member")
                c.close()

            as_user(intruder_uid, member, groups=(SHARE_GID,), gid=SHARE_GID)
            names = list_segment_names(ns)
            assert names and all(f".g{SHARE_GID}.{ns}." in n for n in names)
            assert all(stat.S_IMODE(os.stat(os.path.join(SHM_DIR, n)).st_mode) == 0o660 for n in names)
            with MemoryPoolManager(namespace=ns) as pm:
                assert pm.stats("shared")["blocks"] >= 1           # a member's pool is readable
                pm.destroy_pool("shared")
            c = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                        "enable_prefetch": False})
            try:
                assert c.get("text", "agent_001") == ("plain text is safe", "L2")
                with pytest.raises(TrustError, match="unpickle"):
                    c.get("obj", "agent_001")
            finally:
                c.destroy()
            assert not os.path.exists(marker)
        finally:
            unshare_namespace(ns)


def test_kinds_keep_pools_and_cache_tiers_apart() -> None:
    """A pool can take no tier's name and pools() never lists a tier: the kind is part of every segment name."""
    with throwaway_namespace("trust") as ns:
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 4 << 20,
                                        "enable_prefetch": False})
        try:
            with MemoryPoolManager(namespace=ns) as pm:
                assert pm.pools() == []
                pm.create_pool("l2", size=1 << 20)          # the tier's own id, as a pool: no clash
                pm.create_pool("cache-l2", size=1 << 20)    # the old tier name: an ordinary pool now
                assert sorted(pm.pools()) == ["cache-l2", "l2"]
                cache.put("k", b"v", "agent_001")
                value, level = cache.get("k", "agent_002")
                assert bytes(value) == b"v" and level == "L2"
                del value
                pm.destroy_pool("l2")
                pm.destroy_pool("cache-l2")
        finally:
            cache.destroy()
