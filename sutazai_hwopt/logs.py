"""One standard-library logger per component, optionally written to ``<log_dir>/<component>.log``.

The library never configures the root logger: on import every component logger has only a ``NullHandler``
(the library-logging convention of the ``logging`` HOWTO). The host service, or an application, calls
:func:`configure_file_logging` to send each component to its own rotating file.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

__all__ = ["COMPONENT_LOGS", "configure_file_logging", "get_logger", "remove_file_logging"]

ROOT_LOGGER = "sutazai_hwopt"

#: component -> log file name (the names of the reference deployment).
COMPONENT_LOGS: dict[str, str] = {
    "master": "hardware_optimization.log",
    "memory": "memory_pool_manager.log",
    "cache": "intelligent_cache.log",
    "resources": "resource_pool_coordinator.log",
    "balancer": "dynamic_load_balancer.log",
    "profiler": "performance_profiler.log",
    "eliminator": "bottleneck_eliminator.log",
}

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())

_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def get_logger(component: str) -> logging.Logger:
    """The logger of one component (``sutazai_hwopt.<component>``)."""
    if component not in COMPONENT_LOGS:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown log component {component!r}; known: {', '.join(COMPONENT_LOGS)}")
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")


def configure_file_logging(log_dir: str | os.PathLike[str], *, level: int | str = logging.INFO,
                           max_bytes: int = 10 * 1024**2, backup_count: int = 5) -> dict[str, Path]:
    """Write each component's records to its own rotating file in ``log_dir`` (created mode 0700).

    Returns the component -> path map. Calling it again replaces the handlers it installed before.
    """
    remove_file_logging()
    directory = Path(log_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = {}
    for component, filename in COMPONENT_LOGS.items():
        path = directory / filename
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count,
                                                       encoding="utf-8", delay=False)
        os.chmod(path, 0o600)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger = get_logger(component)
        logger.addHandler(handler)
        logger.setLevel(level)
        _installed.append((logger, handler))
        paths[component] = path
    return paths


def remove_file_logging() -> None:
    """Detach and close the file handlers installed by :func:`configure_file_logging`."""
    while _installed:
        logger, handler = _installed.pop()
        logger.removeHandler(handler)
        handler.close()
