"""The host service's port: the configured one by default, the next free one when it is taken."""

from __future__ import annotations

import socket

import pytest

from sutazai_hwopt.config import load_config
from sutazai_hwopt.host.daemon import _bind


def test_default_port_is_fixed_and_documented() -> None:
    assert load_config().hardware.port == 8731


def test_taken_port_falls_back_to_the_next_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with _bind("127.0.0.1", port, fallback=3) as sock:
            assert sock.getsockname()[1] != port
        with pytest.raises(OSError):
            _bind("127.0.0.1", port)   # an explicit --port does not move


def test_free_port_is_used_as_given() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _bind("127.0.0.1", port, fallback=3) as sock:
        assert sock.getsockname()[1] == port
