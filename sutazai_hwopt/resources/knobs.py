"""The kernel knobs the library turns, each able to probe, read and write one value.

A knob is a small object behind the :class:`Knob` protocol; the journal stores ``(knob name, target, previous,
new)`` and finds the knob by name again when a new process rolls back. Values are JSON values so the journal can
hold them. Per-task settings (affinity, nice, scheduler policy, I/O priority) are written to every thread of the
process (``/proc/<pid>/task``), because the kernel keeps them per thread (sched_setaffinity(2), setpriority(2)
"BUGS", ioprio_set(2)); the main thread's value is the one read back.

Each knob reports, before anything is written, whether this host lets it work for a target:
``available``, ``not permitted`` (the kernel would refuse: missing capability, foreign process) or
``not available`` (the interface does not exist here or cannot act on another process). Transparent hugepages
(``prctl(PR_SET_THP_DISABLE)``, prctl(2)) only act on the calling process, so for any other pid the THP knob says
``not available`` instead of pretending; an agent applies it to itself with :func:`set_thp_disabled`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from typing import Any, Protocol, runtime_checkable

from ..errors import (
    HwoptError,
    InvalidArgumentError,
    KernelPermissionError,
    NotFoundError,
    PlatformError,
)
from .identity import AgentProcess

__all__ = [
    "AVAILABLE", "NOT_AVAILABLE", "NOT_PERMITTED",
    "AffinityKnob", "CgroupDirKnob", "CgroupFileKnob", "CgroupMemberKnob", "IoniceKnob", "Knob", "NiceKnob",
    "SchedPolicyKnob", "ThpKnob", "default_knobs", "has_capability", "kernel_error", "set_thp_disabled",
]

AVAILABLE = "available"
NOT_PERMITTED = "not permitted"
NOT_AVAILABLE = "not available"

CAP_SYS_NICE = 23
CAP_SYS_ADMIN = 21

POLICIES: dict[str, int] = {
    "SCHED_OTHER": os.SCHED_OTHER,
    "SCHED_BATCH": os.SCHED_BATCH,
    "SCHED_IDLE": os.SCHED_IDLE,
    "SCHED_FIFO": os.SCHED_FIFO,
    "SCHED_RR": os.SCHED_RR,
}
_POLICY_NAMES = {v: k for k, v in POLICIES.items()}
REALTIME = frozenset({"SCHED_FIFO", "SCHED_RR"})
IOCLASSES = ("NONE", "RT", "BE", "IDLE")  # index = IOPRIO_CLASS_* value


@runtime_checkable
class Knob(Protocol):
    """One kernel setting. ``proc`` is the target process (or ``None``), ``path`` a file target (or ``None``)."""

    name: str

    def normalize(self, value: Any) -> Any:
        """Validate ``value`` and return its canonical JSON form; raise :class:`InvalidArgumentError`."""
        ...

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        """``(status, reason)``: whether a write to this target can work here, without writing."""
        ...

    def read(self, proc: AgentProcess | None, path: str | None) -> Any:
        """The value the kernel holds now."""
        ...

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        """Set ``value``; raise the library's errors (see :func:`kernel_error`)."""
        ...


def has_capability(cap: int) -> bool:
    """Whether the calling process holds capability ``cap`` in its effective set (capabilities(7))."""
    return _has_capability(cap, os.geteuid())


@functools.lru_cache(maxsize=64)
def _has_capability(cap: int, euid: int) -> bool:
    # Cached per effective uid: capabilities change with setuid(), which changes the key.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def kernel_error(exc: BaseException, knob: str, proc: AgentProcess | None, path: str | None,
                 value: Any) -> HwoptError:
    """Map an OS (or psutil) error from writing ``knob`` to the library's error with a clear message."""
    where = f"pid {proc.pid}" if proc is not None else f"{path}"
    what = f"setting {knob}={value!r} on {where}"
    name = type(exc).__name__
    if isinstance(exc, HwoptError):
        return exc
    if isinstance(exc, ProcessLookupError) or name == "NoSuchProcess":
        return NotFoundError(f"{what}: the process has exited")
    if isinstance(exc, PermissionError) or name == "AccessDenied":
        return KernelPermissionError(f"{what}: the kernel denied it ({exc})")
    if isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.ERANGE):
        return InvalidArgumentError(f"{what}: the kernel rejected the value ({exc})")
    return PlatformError(f"{what}: {exc}")


def _foreign(proc: AgentProcess) -> bool:
    """Whether ``proc`` belongs to another user (changing it needs CAP_SYS_NICE)."""
    try:
        return os.stat(f"/proc/{proc.pid}").st_uid != os.geteuid()
    except OSError:
        return False


def _probe_task(proc: AgentProcess | None) -> tuple[str, str]:
    # Liveness is not probed here: the transaction pinned the process a moment ago and every write checks it.
    if proc is None:
        return NOT_AVAILABLE, "needs a process target"
    if _foreign(proc) and not has_capability(CAP_SYS_NICE):
        return NOT_PERMITTED, f"pid {proc.pid} belongs to another user and CAP_SYS_NICE is missing"
    return AVAILABLE, ""


def _each_thread(proc: AgentProcess, fn: Any) -> None:
    """Apply ``fn(tid)`` to every thread; threads that exit meanwhile are skipped, the main one must work."""
    proc.check()
    for tid in proc.tids():
        try:
            fn(tid)
        except ProcessLookupError:
            if tid == proc.pid:
                raise


def _need(proc: AgentProcess | None) -> AgentProcess:
    if proc is None:
        raise InvalidArgumentError("this knob needs a pid target; got none")
    return proc


class AffinityKnob:
    """CPU affinity (sched_setaffinity(2)); value: sorted list of CPU numbers."""

    name = "affinity"

    def normalize(self, value: Any) -> list[int]:
        try:
            cpus = sorted({int(c) for c in value})
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"affinity must be a collection of CPU numbers, got {value!r}") from None
        online = os.cpu_count() or 1
        if not cpus or cpus[0] < 0 or cpus[-1] >= online:
            raise InvalidArgumentError(f"affinity must be a non-empty set of CPUs in [0, {online}), got {cpus}")
        return cpus

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        return _probe_task(proc)

    def read(self, proc: AgentProcess | None, path: str | None) -> list[int]:
        return sorted(os.sched_getaffinity(_need(proc).pid))

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        cpus = set(value)
        _each_thread(_need(proc), lambda tid: os.sched_setaffinity(tid, cpus))


class NiceKnob:
    """Nice value (setpriority(2), PRIO_PROCESS); value: int in [-20, 19]."""

    name = "nice"

    def normalize(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not -20 <= value <= 19:
            raise InvalidArgumentError(f"nice must be an integer in [-20, 19], got {value!r}")
        return value

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        status = _probe_task(proc)
        if status[0] == AVAILABLE and not has_capability(CAP_SYS_NICE):
            return AVAILABLE, "lowering nice needs CAP_SYS_NICE or RLIMIT_NICE"
        return status

    def read(self, proc: AgentProcess | None, path: str | None) -> int:
        return os.getpriority(os.PRIO_PROCESS, _need(proc).pid)

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        _each_thread(_need(proc), lambda tid: os.setpriority(os.PRIO_PROCESS, tid, int(value)))


class SchedPolicyKnob:
    """Scheduling policy (sched_setscheduler(2)); value: ``{"policy": "SCHED_BATCH", "priority": 0}``.

    Real-time policies (SCHED_FIFO/RR) are refused unless the knob was built with ``allow_realtime=True``:
    a runaway real-time agent can starve the host.
    """

    name = "sched_policy"

    def __init__(self, allow_realtime: bool = False) -> None:
        self.allow_realtime = allow_realtime

    def normalize(self, value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"policy": value, "priority": 0}
        if not isinstance(value, dict) or set(value) - {"policy", "priority"}:
            raise InvalidArgumentError(f"sched_policy must be {{'policy': name, 'priority': int}}, got {value!r}")
        policy, prio = value.get("policy"), value.get("priority", 0)
        if policy not in POLICIES:
            raise InvalidArgumentError(f"sched_policy policy={policy!r} is not one of {', '.join(POLICIES)}")
        if policy in REALTIME:
            if not self.allow_realtime:
                raise InvalidArgumentError(f"sched_policy policy={policy!r} is real-time; allowed only with "
                                           "allow_realtime=True (config hardware.allow_realtime)")
            if not isinstance(prio, int) or not 1 <= prio <= 99:
                raise InvalidArgumentError(f"sched_policy priority={prio!r}: real-time needs 1..99")
        elif prio != 0:
            raise InvalidArgumentError(f"sched_policy priority={prio!r}: {policy} needs priority 0")
        return {"policy": policy, "priority": prio}

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        return _probe_task(proc)

    def read(self, proc: AgentProcess | None, path: str | None) -> dict[str, Any]:
        pid = _need(proc).pid
        policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
        return {"policy": _POLICY_NAMES.get(policy, str(policy)),
                "priority": os.sched_getparam(pid).sched_priority}

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        if value["policy"] in REALTIME and not self.allow_realtime:
            raise InvalidArgumentError(f"sched_policy policy={value['policy']!r} needs allow_realtime=True")
        pol, param = POLICIES[value["policy"]], os.sched_param(value["priority"])
        _each_thread(_need(proc), lambda tid: os.sched_setscheduler(tid, pol, param))


# ioprio_set / ioprio_get syscall numbers (asm/unistd.h); other architectures go through psutil.
_IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "riscv64": (30, 31)}.get(platform.machine())
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13


def _ioprio(get: bool, tid: int, ioprio: int = 0) -> int:
    """ioprio_get/ioprio_set(IOPRIO_WHO_PROCESS, tid[, ioprio]) through libc's syscall()."""
    assert _IOPRIO_SYSCALLS is not None
    libc = _libc()
    if get:
        res = int(libc.syscall(_IOPRIO_SYSCALLS[1], _IOPRIO_WHO_PROCESS, tid))
    else:
        res = int(libc.syscall(_IOPRIO_SYSCALLS[0], _IOPRIO_WHO_PROCESS, tid, ioprio))
    if res < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessLookupError(err, os.strerror(err))
        if err == errno.EPERM:
            raise PermissionError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))
    return res


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


class IoniceKnob:
    """I/O priority (ioprio_set(2)); value: ``{"class": "BE", "value": 4}``.

    On x86_64, aarch64 and riscv64 the two syscalls are made directly through libc's ``syscall()`` (psutil builds a
    ``Process`` object per call, which made I/O priority half the cost of applying a placement); elsewhere
    through psutil.
    """

    name = "ionice"

    def normalize(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or set(value) - {"class", "value"}:
            raise InvalidArgumentError(f"ionice must be {{'class': 'BE', 'value': 0..7}}, got {value!r}")
        cls, level = value.get("class"), value.get("value", 0)
        if cls not in IOCLASSES:
            raise InvalidArgumentError(f"ionice class={cls!r} is not one of {', '.join(IOCLASSES)}")
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 7:
            raise InvalidArgumentError(f"ionice value={level!r} must be an integer in [0, 7]")
        if cls in ("NONE", "IDLE"):
            level = 0
        return {"class": cls, "value": level}

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        return _probe_task(proc)

    def read(self, proc: AgentProcess | None, path: str | None) -> dict[str, Any]:
        if _IOPRIO_SYSCALLS is not None:
            try:
                raw = _ioprio(True, _need(proc).pid)
            except OSError as exc:
                raise kernel_error(exc, self.name, proc, path, None) from exc
            cls, level = raw >> _IOPRIO_CLASS_SHIFT, raw & ((1 << _IOPRIO_CLASS_SHIFT) - 1)
            return {"class": IOCLASSES[cls], "value": level if cls in (1, 2) else 0}
        import psutil

        try:
            cls, level = psutil.Process(_need(proc).pid).ionice()
        except psutil.Error as exc:
            raise kernel_error(exc, self.name, proc, path, None) from exc
        return {"class": IOCLASSES[int(cls)], "value": int(level) if int(cls) in (1, 2) else 0}

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        cls = IOCLASSES.index(value["class"])
        if _IOPRIO_SYSCALLS is not None:
            ioprio = cls << _IOPRIO_CLASS_SHIFT | (value["value"] if cls in (1, 2) else 0)
            _each_thread(_need(proc), lambda tid: _ioprio(False, tid, ioprio))
            return
        import psutil

        def one(tid: int) -> None:
            try:
                psutil.Process(tid).ionice(cls, value["value"] if cls in (1, 2) else None)
            except psutil.NoSuchProcess as exc:
                raise ProcessLookupError(str(exc)) from exc
            except psutil.AccessDenied as exc:
                raise PermissionError(str(exc)) from exc

        _each_thread(_need(proc), one)


_PR_SET_THP_DISABLE = 41
_PR_GET_THP_DISABLE = 42


def _prctl(option: int, arg: int = 0) -> int:
    libc = _libc()
    res = int(libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                         ctypes.c_ulong(0)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def set_thp_disabled(disabled: bool) -> bool:
    """Disable (or re-allow) transparent hugepages for the *calling* process; returns the previous setting.

    Agents call this on themselves: prctl(PR_SET_THP_DISABLE) cannot target another process. The setting is
    inherited across fork and kept across exec.
    """
    previous = bool(_prctl(_PR_GET_THP_DISABLE))
    _prctl(_PR_SET_THP_DISABLE, 1 if disabled else 0)
    return previous


class ThpKnob:
    """Per-process THP opt-out (prctl PR_SET_THP_DISABLE); value: bool (True = THP disabled).

    Only the calling process can be changed, so for any other pid :meth:`probe` says ``not available``.
    """

    name = "thp_disabled"

    def normalize(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"thp_disabled must be a boolean, got {value!r}")
        return value

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        if proc is None or proc.pid != os.getpid():
            return NOT_AVAILABLE, ("prctl(PR_SET_THP_DISABLE) affects only the calling process; the agent "
                                   "must call sutazai_hwopt.resources.set_thp_disabled() itself")
        if not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
            return NOT_AVAILABLE, "the kernel has no transparent hugepages"
        return AVAILABLE, ""

    def read(self, proc: AgentProcess | None, path: str | None) -> bool:
        if proc is None or proc.pid != os.getpid():
            raise PlatformError("thp_disabled can only be read for the calling process")
        return bool(_prctl(_PR_GET_THP_DISABLE))

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        if proc is None or proc.pid != os.getpid():
            raise PlatformError("thp_disabled can only be set for the calling process (prctl)")
        _prctl(_PR_SET_THP_DISABLE, 1 if value else 0)


class CgroupFileKnob:
    """One cgroup control file (``cpu.shares``, ``cpu.max``, ``cpuset.cpus``, ...); value: its text."""

    name = "cgroup_file"

    def normalize(self, value: Any) -> str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise InvalidArgumentError(f"cgroup_file value must be a string or integer, got {value!r}")
        return str(value).strip()

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        if path is None:
            return NOT_AVAILABLE, "needs a file path"
        if not os.path.exists(path):
            parent = os.path.dirname(path)
            if os.path.isdir(parent):
                return NOT_AVAILABLE, f"{path} does not exist (controller not enabled here)"
            while parent and parent != "/" and not os.path.isdir(parent):
                parent = os.path.dirname(parent)
            if not os.access(parent, os.W_OK):
                return NOT_PERMITTED, f"{parent} is not writable by uid {os.geteuid()}"
            return AVAILABLE, "group to be created"
        if not os.access(path, os.W_OK):
            return NOT_PERMITTED, f"{path} is not writable by uid {os.geteuid()}"
        return AVAILABLE, ""

    def read(self, proc: AgentProcess | None, path: str | None) -> str | None:
        if path is None:
            raise InvalidArgumentError("cgroup_file needs a path")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        if path is None:
            raise InvalidArgumentError("cgroup_file needs a path")
        if value is None:
            return  # the file did not exist before: nothing to restore
        with open(path, "w") as f:
            f.write(str(value))


class CgroupDirKnob:
    """Existence of a cgroup directory the library created; value: bool. Removing needs it to be empty."""

    name = "cgroup_dir"

    def normalize(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"cgroup_dir value must be a boolean, got {value!r}")
        return value

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        if path is None:
            return NOT_AVAILABLE, "needs a directory path"
        parent = os.path.dirname(path.rstrip("/"))
        while parent and not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            return NOT_PERMITTED, f"{parent} is not writable by uid {os.geteuid()}"
        return AVAILABLE, ""

    def read(self, proc: AgentProcess | None, path: str | None) -> bool:
        return path is not None and os.path.isdir(path)

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        if path is None:
            raise InvalidArgumentError("cgroup_dir needs a path")
        if value and not os.path.isdir(path):
            os.mkdir(path)
        elif not value and os.path.isdir(path):
            os.rmdir(path)


class CgroupMemberKnob:
    """Which cgroup of one hierarchy a process sits in; target: pid + hierarchy mount; value: relative path."""

    name = "cgroup_member"

    def normalize(self, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
            raise InvalidArgumentError(f"cgroup_member value must be an absolute group path, got {value!r}")
        return value

    def probe(self, proc: AgentProcess | None, path: str | None) -> tuple[str, str]:
        status = _probe_task(proc)
        if status[0] != AVAILABLE:
            return status
        if path is None or not os.path.exists(os.path.join(path, "cgroup.procs")):
            return NOT_AVAILABLE, f"no cgroup hierarchy mounted at {path}"
        if not os.access(path, os.W_OK):
            return NOT_PERMITTED, f"{path} is not writable by uid {os.geteuid()}"
        return AVAILABLE, ""

    def read(self, proc: AgentProcess | None, path: str | None) -> str:
        from .cgroups import detect_cgroups

        pid = _need(proc).pid
        for h in detect_cgroups().hierarchies:
            if path is not None and os.path.samefile(h.mount, path):
                rel = h.relative_of(pid)
                if rel is None:
                    raise PlatformError(f"pid {pid} is not listed in hierarchy {path}")
                return rel
        raise PlatformError(f"no cgroup hierarchy mounted at {path}")

    def write(self, proc: AgentProcess | None, path: str | None, value: Any) -> None:
        p = _need(proc)
        p.check()
        if path is None:
            raise InvalidArgumentError("cgroup_member needs the hierarchy mount as path")
        target = os.path.normpath(path + "/" + str(value).lstrip("/"))
        with open(os.path.join(target, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))


def default_knobs(allow_realtime: bool = False) -> dict[str, Knob]:
    """Name -> knob for every built-in knob."""
    knobs: list[Knob] = [AffinityKnob(), NiceKnob(), SchedPolicyKnob(allow_realtime), IoniceKnob(), ThpKnob(),
                         CgroupFileKnob(), CgroupDirKnob(), CgroupMemberKnob()]
    return {k.name: k for k in knobs}
