"""The remote tier against a real redis-server on loopback: values are signed, and nothing unsigned, forged,
moved or signed by another deployment is ever decoded — a crafted pickle under a key the agents read is a miss,
runs nothing, and is logged."""

from __future__ import annotations

import logging
import os
import pickle
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from sutazai_hwopt.cache.codec import KIND_PICKLE, encode, key_bytes
from sutazai_hwopt.cache.remote import KEY_FILE, RemoteTier, load_signing_key
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.errors import ConfigError, TrustError


class _MakesDir:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.path,))


def _cfg(ns: str, redis_url: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"namespace": ns, "l1_size": 1 << 18, "l2_size": 2 << 20, "l3_size": 0,
                               "enable_prefetch": False, "redis_url": redis_url}
    base.update(kw)
    return base


def _raw_client(redis_url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(redis_url)


def _crafted_blobs(path: str) -> list[bytes]:
    stream = pickle.dumps(_MakesDir(path), protocol=5)
    head = struct.pack("<Q", 0) + stream
    old_format = struct.pack("<HBxIQ", KIND_PICKLE, 0, len(head), 0) + head           # the unsigned format
    fake_signed = b"SZc1" + bytes(32) + old_format                                    # magic, zero tag
    return [stream, old_format, fake_signed, b"SZc1", b""]


def test_crafted_pickle_is_a_miss_runs_nothing_and_is_logged(ns: str, redis_url: str, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Whatever an intruder writes under a key the agents read, the agent gets a miss and no code runs."""
    marker = tmp_path / "pwned"
    cache = IntelligentCacheSystem(_cfg(ns, redis_url))
    client = _raw_client(redis_url)
    try:
        for i, blob in enumerate(_crafted_blobs(str(marker))):
            client.set(ns.encode() + b":" + key_bytes(f"prompt:{i}"), blob)
            with caplog.at_level(logging.WARNING, logger="sutazai_hwopt.cache"):
                assert cache.get(f"prompt:{i}", "agent_001") == (None, None)
            assert not cache.contains(f"prompt:{i}")
            assert not marker.exists()
        assert "refused the value" in caplog.text
        assert caplog.text.count("refused the value") == 1      # rate-limited: one warning for five refusals
        assert cache.stats()["levels"]["remote"]["rejected"] >= 5
        assert cache.stats()["misses"] == 5
    finally:
        client.close()
        cache.clear()
        cache.destroy()
    assert not marker.exists()


def test_value_of_another_deployment_is_refused(ns: str, redis_url: str, tmp_path: Path) -> None:
    """A value signed with another key (another deployment on the same server) reads as a miss, pickles
    included; this deployment's values round-trip."""
    marker = tmp_path / "pwned"
    mine = IntelligentCacheSystem(_cfg(ns, redis_url, l2_size=0, redis_hmac_key="k" * 32))
    theirs = RemoteTier(redis_url, ns, hmac_key="x" * 32)
    try:
        for name, value in (("p", _MakesDir(str(marker))), ("b", b"bytes"), ("s", "text")):
            kind, head, body = encode(value)
            theirs.put(key=key_bytes(name), key_hash=0, kind=kind, priority=0, head=head, body=body)
            assert mine.get(name, "a") == (None, None)
        assert not marker.exists()
        mine.put("ok", {"x": np.arange(3)}, "a")
        mine.put("raw", b"\x00\x01", "a")
        mine._l1.clear()
        v, level = mine.get("ok", "a")
        assert level == "remote" and np.array_equal(v["x"], np.arange(3))
        assert bytes(mine.get("raw", "a")[0]) == b"\x00\x01"
        assert theirs.get(key=key_bytes("ok"), key_hash=0) is None
    finally:
        theirs.clear()
        theirs.close()
        mine.destroy()


def test_a_value_moved_to_another_key_or_namespace_is_refused(ns: str, redis_url: str) -> None:
    """The key and the namespace are signed: copying a genuine value under another key does not serve it."""
    a = RemoteTier(redis_url, ns, hmac_key="k" * 32)
    b = RemoteTier(redis_url, ns + "x", hmac_key="k" * 32)
    client = _raw_client(redis_url)
    try:
        a.put(key=b"sadmin", key_hash=0, kind=1, priority=3, head=b"", body=[b"secret"])
        assert a.get(key=b"sadmin", key_hash=0) == (1, 3, b"", b"secret")
        blob = client.get(ns.encode() + b":sadmin")
        client.set(ns.encode() + b":sguest", blob)
        client.set((ns + "x").encode() + b":sadmin", blob)
        assert a.get(key=b"sguest", key_hash=0) is None
        assert b.get(key=b"sadmin", key_hash=0) is None
        tampered = bytearray(blob)
        tampered[-1] ^= 1
        client.set(ns.encode() + b":sadmin", bytes(tampered))
        assert a.get(key=b"sadmin", key_hash=0) is None
        assert a.rejected == 2 and b.rejected == 1
    finally:
        a.clear()
        b.clear()
        client.close()
        a.close()
        b.close()


def test_key_file_is_created_private_and_shared(runtime_dir: str) -> None:
    """Without a configured key, every process of the host reads one 32-byte key file, mode 0600."""
    k1 = load_signing_key()
    k2 = load_signing_key()
    path = Path(runtime_dir) / KEY_FILE
    assert k1 == k2 and len(k1) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(runtime_dir).stat().st_mode) == 0o700
    assert load_signing_key("y" * 20) == b"y" * 20


def test_key_file_open_to_others_or_damaged_is_refused(runtime_dir: str) -> None:
    load_signing_key()
    path = Path(runtime_dir) / KEY_FILE
    path.chmod(0o644)
    with pytest.raises(TrustError):
        load_signing_key()
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(TrustError):
        load_signing_key()
    with pytest.raises(ConfigError):
        load_signing_key("short")
