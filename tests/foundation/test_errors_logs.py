"""The error hierarchy and per-component logging."""

from __future__ import annotations

import inspect
import logging
import stat
from pathlib import Path

import pytest

from sutazai_hwopt import errors, logs
from sutazai_hwopt.testing import FakeClock


def test_every_error_derives_from_the_base() -> None:
    """Each exception class in errors.py is a HwoptError."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) == len(errors.__all__)
    for cls in classes:
        assert issubclass(cls, errors.HwoptError), cls


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.PoolExhaustedError, MemoryError),
        (errors.ConfigError, ValueError),
        (errors.NotFoundError, KeyError),
        (errors.AccessDeniedError, PermissionError),
        (errors.KernelPermissionError, PermissionError),
        (errors.InvalidArgumentError, ValueError),
    ],
)
def test_errors_are_also_the_builtin_a_caller_catches(cls: type, builtin: type) -> None:
    """Library errors can be caught as the builtin a caller would expect."""
    assert issubclass(cls, builtin)


def test_not_found_message_is_plain() -> None:
    """NotFoundError prints its message, not the repr KeyError would give."""
    assert str(errors.NotFoundError("unknown pool 'x'")) == "unknown pool 'x'"


def test_usage_and_internal_are_separate() -> None:
    """Usage errors and internal/corruption errors are disjoint branches."""
    assert not issubclass(errors.CorruptionError, errors.UsageError)
    assert not issubclass(errors.ConfigError, errors.InternalError)


def test_no_root_logger_configuration() -> None:
    """Importing the library adds no handler to the root logger."""
    assert not any(getattr(h, "baseFilename", "").endswith(".log") for h in logging.getLogger().handlers)


def test_file_logging_per_component(tmp_path: Path) -> None:
    """Each component writes to its own private file; removal closes them."""
    paths = logs.configure_file_logging(tmp_path / "logs")
    try:
        logs.get_logger("cache").info("hello cache")
        logs.get_logger("balancer").warning("hello balancer")
        for handler in logging.getLogger("sutazai_hwopt.cache").handlers:
            handler.flush()
        for handler in logging.getLogger("sutazai_hwopt.balancer").handlers:
            handler.flush()
        assert "hello cache" in paths["cache"].read_text()
        assert "hello cache" not in paths["balancer"].read_text()
        assert paths["cache"].name == "intelligent_cache.log"
        assert stat.S_IMODE(paths["cache"].stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    finally:
        logs.remove_file_logging()
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("sutazai_hwopt.cache").handlers)


def test_unknown_component() -> None:
    """Asking for a logger of an unknown component is a usage error."""
    with pytest.raises(errors.InvalidArgumentError, match="unknown log component"):
        logs.get_logger("gpu")


def test_fake_clock() -> None:
    """FakeClock moves only forward, by hand."""
    clock = FakeClock(5.0)
    assert clock() == 5.0
    assert clock.advance(1.5) == 6.5
    with pytest.raises(errors.InvalidArgumentError):
        clock.advance(-1)
    assert clock() == 6.5
