"""The library's exception hierarchy: every error it raises derives from :class:`HwoptError`.

Each subclass also inherits the builtin a caller would already catch, so
``except MemoryError`` still works for an exhausted pool::

    HwoptError(Exception)
    ├── UsageError                        you called the API wrongly
    │   ├── ConfigError(ValueError)       bad configuration value, key, type or file
    │   ├── InvalidArgumentError(ValueError)
    │   │   ├── WeightError               a weigher/size that is negative, not a number or too large
    │   │   └── UnhashableKeyError(TypeError)  a cache key that cannot be hashed
    │   ├── NotFoundError(KeyError)       unknown pool, block, agent, backend or bottleneck id
    │   ├── AccessDeniedError(PermissionError)  an agent touched a block it holds no grant for
    │   ├── StateError(RuntimeError)      the object is in the wrong state (sealed, freed, closed)
    │   ├── AlreadyExistsError(ValueError) duplicate id / name
    │   └── SerializationError(TypeError)  a value that cannot be pickled (the message names its key)
    ├── CapacityError                     a bound was hit
    │   ├── PoolExhaustedError(MemoryError)
    │   └── NoBackendAvailableError(RuntimeError)
    ├── CircuitOpenError(RuntimeError)    a circuit breaker refused the call
    ├── LoaderError(RuntimeError)         a cache loader raised; the original is ``__cause__``
    ├── PlatformError(OSError)            the kernel refused or lacks a knob
    │   └── KernelPermissionError(PermissionError)
    ├── TrustError(PermissionError)       a shared segment or file is not ours (owner, mode): refused unread
    └── InternalError(RuntimeError)       the library's own state is wrong, not the caller's fault
        ├── CorruptionError               a shared structure failed its invariant check
        └── IncompatibleLayoutError       a segment is not ours, or of another layout version

"Usage" errors mean the caller can fix the call; "internal" errors mean shared state was found damaged
(the library fences or repairs it and reports what it did).
"""

from __future__ import annotations

__all__ = [
    "HwoptError",
    "UsageError",
    "ConfigError",
    "InvalidArgumentError",
    "WeightError",
    "SerializationError",
    "UnhashableKeyError",
    "NotFoundError",
    "AccessDeniedError",
    "StateError",
    "AlreadyExistsError",
    "CapacityError",
    "PoolExhaustedError",
    "NoBackendAvailableError",
    "CircuitOpenError",
    "LoaderError",
    "PlatformError",
    "KernelPermissionError",
    "TrustError",
    "InternalError",
    "CorruptionError",
    "IncompatibleLayoutError",
]


class HwoptError(Exception):
    """Base class of every error raised by sutazai_hwopt."""


class UsageError(HwoptError):
    """The caller used the API wrongly; nothing stored was changed."""


class ConfigError(UsageError, ValueError):
    """A configuration value, key, type or file is invalid.

    Attributes:
        file: the file the value came from, or ``None`` for in-code configuration.
        key: the dotted key that is wrong, or ``None`` when the whole file is unreadable.
        reason: what is wrong and what is allowed.
    """

    def __init__(self, reason: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = []
        if file is not None:
            where.append(f"file {file!r}")
        if key is not None:
            where.append(f"key {key!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + reason)


class InvalidArgumentError(UsageError, ValueError):
    """An argument has the wrong type or value."""


class WeightError(InvalidArgumentError):
    """A size or weigher result is negative, not a number, or larger than the bound."""


class UnhashableKeyError(InvalidArgumentError, TypeError):
    """A cache key is not hashable (``except TypeError`` still catches it, as for a dict)."""


class SerializationError(UsageError, TypeError):
    """An object cannot be pickled (``except TypeError`` still catches it, as for :mod:`pickle`'s own)."""


class NotFoundError(UsageError, KeyError):
    """An id (pool, block, agent, backend, bottleneck) is unknown."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AccessDeniedError(UsageError, PermissionError):
    """An agent used a resource it was not granted."""


class StateError(UsageError, RuntimeError):
    """The object is in the wrong state for the call (sealed, freed, closed, not started)."""


class AlreadyExistsError(UsageError, ValueError):
    """A name or id is already taken."""


class CapacityError(HwoptError):
    """A capacity bound was reached."""


class PoolExhaustedError(CapacityError, MemoryError):
    """A memory pool (or cache tier) has no room for the request."""


class NoBackendAvailableError(CapacityError, RuntimeError):
    """Every backend is full, ejected or unhealthy."""


class CircuitOpenError(HwoptError, RuntimeError):
    """A circuit breaker is open (or half-open and out of probes) and refused the call."""


class LoaderError(HwoptError, RuntimeError):
    """A loader raised; the original exception is ``__cause__``."""


class PlatformError(HwoptError, OSError):
    """The kernel refused an operation or does not offer the knob."""


class KernelPermissionError(PlatformError, PermissionError):
    """The kernel denied a change for lack of privilege."""


class TrustError(HwoptError, PermissionError):
    """A segment, file or directory in a shared place is owned by another user or open to others.

    Raised before anything in it is read; the message names the object, the owner found and what to do.
    """


class InternalError(HwoptError, RuntimeError):
    """The library's own state is wrong; not the caller's fault."""


class CorruptionError(InternalError):
    """A shared structure failed its invariant check; the message names the invariant."""


class IncompatibleLayoutError(InternalError):
    """A shared segment is not one of ours, or has another layout version."""
