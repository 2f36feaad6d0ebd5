"""``--enable-compression`` / ``cache.compression`` reach the pools: the daemon creates its pools with that codec as
the default of puts that name none, so a compressible payload any process stores in them takes fewer bytes; an
explicit ``compression=`` still wins, and ``"none"`` stays possible."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sutazai_hwopt.config import HwoptConfig
from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

from .test_switches import daemon, daemon_config  # the daemon as those tests run it, from deploy flags

MiB = 1 << 20
PAYLOAD = b"compressible line of text\n" * 20000      # ~0.5 MiB


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("poolz") as name:
        yield name


@pytest.fixture
def conf(tmp_path: Path, ns: str) -> Path:
    """Files with compression off (the flag turns it on) and 1 MiB pools."""
    (tmp_path / "cache_system.json").write_text(json.dumps({"namespace": ns, "compression": "none"}))
    (tmp_path / "hardware_optimization.json").write_text(json.dumps({"shared_memory_size_mb": 1}))
    return tmp_path


def stored(served: HwoptConfig, compression: str | None = None) -> tuple[int, int]:
    """(stored, logical) bytes of PAYLOAD put into the daemon's default pool by a manager built from ``served``."""
    with MemoryPoolManager(served.cache.namespace, config=served) as pm:
        before = pm.stats("default")
        bid = pm.put_bytes("agent_z", PAYLOAD, compression=compression)
        after = pm.stats("default")
        assert pm.read("agent_z", bid) == PAYLOAD
        pm.free_memory("agent_z", bid)
    return after["stored_bytes"] - before["stored_bytes"], after["logical_bytes"] - before["logical_bytes"]


def test_enable_compression_compresses_puts_into_the_daemons_pools(conf: Path, tmp_path: Path) -> None:
    with daemon(daemon_config(conf), tmp_path) as (_svc, served):
        assert stored(served) == (len(PAYLOAD), len(PAYLOAD))                 # the files said "none"
        small, logical = stored(served, "lz4")                                # a put may still ask for it
        assert logical == len(PAYLOAD) and small < len(PAYLOAD) // 10
    with daemon(daemon_config(conf, "--enable-compression"), tmp_path) as (_svc, served):
        small, logical = stored(served)
        assert logical == len(PAYLOAD) and small < len(PAYLOAD) // 10        # same payload, a tenth of the bytes
        assert stored(served, "none") == (len(PAYLOAD), len(PAYLOAD))         # an explicit codec wins
        with MemoryPoolManager(served.cache.namespace) as pm:                 # the pool holds the default:
            assert pm.stats("shared")["default_compression"] == "lz4"         # any process, any config


def test_a_redeploy_sets_the_codec_of_the_pools_it_keeps(conf: Path, tmp_path: Path, ns: str) -> None:
    config = daemon_config(conf, "--enable-compression")
    svc = HostService(config, state_dir=str(tmp_path / "j1"))
    try:
        svc.own_namespace()
    finally:
        svc.close()                                                           # the pools stay for a restart
    with daemon(daemon_config(conf), tmp_path) as (_svc, served):             # deployed again without the flag
        assert stored(served) == (len(PAYLOAD), len(PAYLOAD))
        with MemoryPoolManager(ns) as pm:
            assert pm.stats("default")["default_compression"] == "none"


def test_a_pools_default_codec(ns: str) -> None:
    with MemoryPoolManager(ns) as pm:
        pm.create_pool("plain", size=4 * MiB)
        pm.create_pool("zipped", size=4 * MiB, compression="zlib")
        assert pm.stats("plain")["default_compression"] == "none"             # as before: raw unless asked
        with MemoryPoolManager(ns) as other:                                  # another mapping of the pool
            bid = other.put_bytes("a", PAYLOAD, pool_id="zipped")
            assert other.block_info("a", bid)["compression"] == "zlib"
        assert pm.set_default_compression("zipped", "lz4") == "zlib"
        assert pm.block_info("a", pm.put_bytes("a", PAYLOAD, pool_id="zipped"))["compression"] == "lz4"
        assert pm.block_info("a", bid)["compression"] == "zlib"               # stored blocks keep theirs
        with pytest.raises(InvalidArgumentError):
            pm.set_default_compression("plain", "zstd")
        with pytest.raises(InvalidArgumentError):
            pm.create_pool("bad", size=4 * MiB, compression="brotli")
        assert "bad" not in pm.pools()


def test_arrays_stay_raw_for_zero_copy_views_in_a_compressing_pool(ns: str) -> None:
    """The pool's default codec is for byte puts: an array (highly compressible here) is stored raw unless its put
    names a codec, so ``get_array`` still views it; naming one compresses it, and then only ``read`` gets it."""
    np = pytest.importorskip("numpy")
    weights = np.zeros((256, 256), dtype=np.float32)
    with MemoryPoolManager(ns) as pm:
        pm.create_pool("zipped", size=4 * MiB, compression="lz4")
        raw = pm.put_array("a", weights, pool_id="zipped", enable_dedup=False)
        assert pm.block_info("a", raw)["compression"] == "none"
        view = pm.get_array("a", raw, dtype=np.float32, shape=weights.shape)
        assert np.array_equal(view, weights)
        del view
        packed = pm.put_array("a", weights, pool_id="zipped", enable_dedup=False, compression="lz4")
        assert pm.block_info("a", packed)["compression"] == "lz4"
        assert pm.read("a", packed) == weights.tobytes()
