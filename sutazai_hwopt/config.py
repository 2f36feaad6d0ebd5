"""Typed, validated configuration: the reference keys, per-component sections and the three modes.

A configuration directory holds up to four JSON files, each optional::

    hardware_optimization.json   HardwareSection: the top-level keys (max_cpu_usage, cache_size_mb, ...), "mode"
    cache_system.json            CacheSection
    load_balancer.json           BalancerSection
    bottleneck_eliminator.json   EliminatorSection

Values are resolved in this order, later winning: the built-in defaults, the preset of the chosen mode
(``conservative`` / ``balanced`` / ``aggressive``, see :data:`MODES`), then the files, then keyword overrides.
Every value is checked against its declared type and range; an unknown key, a wrong type, an out-of-range value
or an unreadable file raises :class:`~sutazai_hwopt.errors.ConfigError` naming the file, the key and what is
allowed. Validation is hand-written over dataclass field metadata rather than pydantic, to keep
``import sutazai_hwopt`` light and dependency-free for embedding agents.

Every part takes its configuration the same way, through :func:`section_of`: the whole :class:`HwoptConfig`,
its own section object, a mapping of that section's keys, or ``None`` for the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, TypeVar

from ._native.cache_core import POLICIES as CACHE_POLICIES  # the one policy list
from .errors import ConfigError

__all__ = [
    "MODES",
    "SECTION_FILES",
    "BalancerSection",
    "CacheSection",
    "ConfigSource",
    "EliminatorSection",
    "HardwareConfig",
    "HardwareSection",
    "HwoptConfig",
    "load_config",
    "section_of",
]

_T = TypeVar("_T", bound="_Section")


def _opt(default: Any, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[Any, ...] | None = None, doc: str = "", usage: bool = False) -> Any:
    """A dataclass field with validation metadata (range or choices) and a one-line meaning.

    ``usage``: a usage limit, given as a fraction or a percent and stored as a percent (:func:`_usage_percent`).
    """
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc, "usage": usage}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


@dataclass(frozen=True)
class _Section:
    """Base of every config section: validation of types, ranges and choices from field metadata."""

    FILE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_value(type(self), f, getattr(self, f.name), file=None)
            if f.metadata.get("usage"):  # a fraction given to the constructor is stored as its percent
                object.__setattr__(self, f.name, value)

    @classmethod
    def from_mapping(cls: type[_T], data: Mapping[str, Any], *, file: str | None = None,
                     base: _T | None = None, prefix: str = "") -> _T:
        """Build a section from a JSON object, starting from ``base`` (or the defaults)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a JSON object, got {type(data).__name__}", file=file,
                              key=prefix.rstrip(".") or None)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = dataclasses.asdict(base) if base is not None else {}
        for key, value in data.items():
            if key not in known:
                allowed = ", ".join(sorted(known))
                raise ConfigError(f"unknown key; allowed keys are: {allowed}", file=file, key=prefix + str(key))
            values[key] = _check_value(cls, known[key], value, file=file, prefix=prefix)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(exc.reason, file=file, key=exc.key) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(cls: type, f: dataclasses.Field[Any], value: Any, *, file: str | None,
                 prefix: str = "") -> Any:
    key = prefix + f.name
    expected = cls.__annotations__.get(f.name, "")
    # Annotations are strings under `from __future__ import annotations`.
    tp = {"bool": bool, "int": int, "float": float, "str": str}.get(str(expected).split("|")[0].strip())
    nullable = "None" in str(expected)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"must not be null; expected {_type_name(tp)}", file=file, key=key)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"expected a boolean (true/false), got {value!r}", file=file, key=key)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"expected an integer, got {value!r}", file=file, key=key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", file=file, key=key)
        if not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", file=file, key=key)
        value = float(value)
        if f.metadata.get("usage"):
            value = _usage_percent(value, file=file, key=key)
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}", file=file, key=key)
    lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, choices))}", file=file, key=key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{value!r} is out of range; allowed {rng}", file=file, key=key)
    return value


#: Usage limits (``max_cpu_usage``, ``max_memory_usage``) are stored as percents in this range; a value in
#: ``(0, 1]`` is read as a fraction of one (the seed's ``0.85``) and converted exactly to its percent.
USAGE_PERCENT_MIN = 5.0


def _usage_percent(value: float, *, file: str | None, key: str) -> float:
    """A usage limit as a percent: ``(0, 1]`` is a fraction (x 100, exact in decimal), ``[5, 100]`` a percent.

    Anything else is refused: ``<= 0`` and ``> 100`` are out of range; ``(1, 5)`` is ambiguous (a fraction above
    one, or a limit of a few percent, which no host runs at) and the message says how to write either.
    Percents are canonical because every stored limit is one, so converting twice changes nothing.
    """
    if 0.0 < value <= 1.0:
        percent = float(Decimal(repr(value)) * 100)   # 0.85 -> 85.0, not 85.00000000000001
        if value < USAGE_PERCENT_MIN / 100:
            raise ConfigError(f"fraction {value!r} is {percent:g}%, below the {USAGE_PERCENT_MIN:g}% minimum of a "
                              f"usage limit; allowed a fraction in [0.05, 1] or a percent in "
                              f"[{USAGE_PERCENT_MIN:g}, 100]", file=file, key=key)
        return percent
    if 1.0 < value < USAGE_PERCENT_MIN:
        raise ConfigError(f"{value!r} is ambiguous: write a fraction in (0, 1] (e.g. 0.85) or a percent in "
                          f"[{USAGE_PERCENT_MIN:g}, 100] (e.g. 85)", file=file, key=key)
    if not USAGE_PERCENT_MIN <= value <= 100.0:
        raise ConfigError(f"{value!r} is out of range; allowed a fraction in (0, 1] or a percent in "
                          f"[{USAGE_PERCENT_MIN:g}, 100]", file=file, key=key)
    return value


SCHEDULER_POLICIES = ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
MODE_NAMES = ("conservative", "balanced", "aggressive")


@dataclass(frozen=True)
class HardwareSection(_Section):
    """Top-level keys of ``hardware_optimization.json`` (the reference config)."""

    FILE: ClassVar[str] = "hardware_optimization.json"

    mode: str = _opt("balanced", choices=MODE_NAMES, doc="named preset applied before the files")
    max_cpu_usage: float = _opt(85.0, doc="host CPU use (%%) above which detection reports a CPU bottleneck "
                                          "(0.85 means 85)", usage=True)
    max_memory_usage: float = _opt(85.0, doc="host memory use (%%) above which detection reports memory pressure "
                                             "(0.8 means 80)", usage=True)
    cache_size_mb: int = _opt(1280, lo=1, hi=1 << 20,
                              doc="budget of the shared tiers (L2 + L3) the host service creates; L3 gives way first")
    shared_memory_size_mb: int = _opt(1024, lo=1, hi=1 << 22, doc="size of each default pool the host service creates")
    prefetch_depth: int = _opt(3, lo=0, hi=64, doc="the same setting as cache.prefetch_depth (either file may set it)")
    enable_numa: bool = _opt(True, doc="keep an agent's cores and memory on one NUMA node")
    enable_transparent_hugepages: bool = _opt(False, doc="per-process THP through prctl")
    scheduler_policy: str = _opt("SCHED_OTHER", choices=SCHEDULER_POLICIES, doc="policy for agents")
    allow_realtime: bool = _opt(False, doc="permit SCHED_FIFO/RR (never implied by a mode)")
    affinity_strategy: str = _opt("static", choices=("none", "shared", "static"),
                                  doc="none: leave affinity; shared: NUMA-local shared pool only; "
                                      "static: exclusive pool for high priority + shared pool")
    manage_nice: bool = _opt(True, doc="set nice from priority (nice_min..nice_max)")
    manage_ionice: bool = _opt(True, doc="set I/O priority (best-effort level) from priority")
    idle_priority_max: int = _opt(-1, lo=-1, hi=10, doc="agents at or below this priority get SCHED_IDLE "
                                                        "and idle I/O class; -1: none")
    exclusive_pool_fraction: float = _opt(0.5, lo=0.0, hi=1.0, doc="max share of cores given exclusively")
    shared_pool_min_cores: int = _opt(1, lo=1, hi=4096, doc="physical cores always left to the shared pool")
    use_cgroups: bool = _opt(False, doc="also write cgroup knobs (cpu weight/quota, cpuset) where permitted")
    cgroup_name: str = _opt("sutazai_hwopt", doc="parent group created under each writable hierarchy")
    state_dir: str | None = _opt(None, doc="journal directory; None: $XDG_STATE_HOME/sutazai_hwopt")
    oversubscription: float = _opt(2.0, lo=1.0, hi=64.0, doc="max shared-pool demand / supply")
    exclusive_priority: int = _opt(8, lo=0, hi=10, doc="priority at or above which cores are exclusive")
    nice_min: int = _opt(-5, lo=-20, hi=19, doc="nice given to the highest priority")
    nice_max: int = _opt(10, lo=-20, hi=19, doc="nice given to the lowest priority")
    sample_interval_s: float = _opt(1.0, lo=0.05, hi=3600.0, doc="profiler sampling period")
    bind_host: str = _opt("127.0.0.1", doc="address the host service's HTTP API listens on")
    port: int = _opt(8731, lo=0, hi=65535, doc="HTTP port (taken: the next free one; 0: any free one)")
    log_dir: str | None = _opt(None, doc="directory for <component>.log files; None: no files")
    log_level: str = _opt("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), doc="log level")
    gc_interval_s: float = _opt(10.0, lo=0.0, hi=86400.0,
                                doc="the host service reclaims dead agents' pool blocks and cache pins this "
                                    "often; 0: never (pools still reclaim when full)")
    grant_grace_s: float = _opt(300.0, lo=0.0, hi=30 * 86400.0,
                                doc="a block granted to an agent that never attaches is reclaimed after this")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nice_min > self.nice_max:
            raise ConfigError(f"nice_min ({self.nice_min}) must be <= nice_max ({self.nice_max})",
                              key="nice_min")


@dataclass(frozen=True)
class CacheSection(_Section):
    """``cache_system.json``: the multi-level cache."""

    FILE: ClassVar[str] = "cache_system.json"

    namespace: str = _opt("sutazai", doc="processes with the same namespace share L2/L3")
    l1_size: int = _opt(64 * 1024**2, lo=0, hi=1 << 44, doc="L1 bytes per process")
    l2_size: int = _opt(256 * 1024**2, lo=0, hi=1 << 44, doc="L2 bytes, shared")
    l3_size: int = _opt(1024**3, lo=0, hi=1 << 46, doc="L3 bytes, shared, compressed")
    policy: str = _opt("adaptive", choices=CACHE_POLICIES, doc="L1 eviction policy")
    enable_prefetch: bool = _opt(True, doc="learned prefetching")
    prefetch_depth: int = _opt(3, lo=0, hi=64, doc="keys prefetched per access")
    compression: str = _opt("lz4", choices=("lz4", "zlib", "none"), doc="L3 codec")
    l3_directory: str | None = _opt(None, doc="back L3 by this directory so it survives restarts")
    redis_url: str | None = _opt(None, doc="remote tier shared by several hosts")
    redis_hmac_key: str | None = _opt(None, doc="key signing remote values (the same on every host); "
                                      "None: a random key in the runtime directory (one host)")
    l2_max_entries: int | None = _opt(None, lo=48, hi=1 << 30, doc="L2 index capacity; None: l2_size / 1 KiB")
    l3_max_entries: int | None = _opt(None, lo=48, hi=1 << 30, doc="L3 index capacity; None: l3_size / 1 KiB")
    prefetch_order: int = _opt(2, lo=1, hi=8, doc="context length of the Markov prefetch model")
    prefetch_min_confidence: float = _opt(0.3, lo=0.0, hi=1.0, doc="least successor probability prefetched")
    prefetch_queue: int = _opt(64, lo=1, hi=65536, doc="bounded queue of the prefetch worker")
    prefetch_inline: bool = _opt(False, doc="prefetch synchronously in get() (deterministic tests/benches)")
    prefetch_mode: str = _opt("auto", choices=("auto", "always"),
                              doc="auto: run the model only while it pays; always: run it on every access")
    prefetch_batch: int = _opt(8, lo=1, hi=4096, doc="accesses handed to the prefetch worker at once")
    prefetch_min_precision: float = _opt(0.4, lo=0.0, hi=1.0,
                                         doc="auto mode: least used/prefetched of a window to stay on")
    prefetch_min_coverage: float = _opt(0.05, lo=0.0, hi=1.0,
                                        doc="auto mode: least used/(used+misses) of a window to stay on")
    write_behind: bool = _opt(False, doc="a put that finds L2's lock busy returns at once; the entry is written "
                              "by this process shortly after (many processes per core)")


@dataclass(frozen=True)
class BalancerSection(_Section):
    """``load_balancer.json``: the client-side load balancer."""

    FILE: ClassVar[str] = "load_balancer.json"

    algorithm: str = _opt("adaptive", choices=("round_robin", "weighted_round_robin", "least_connections",
                                                "p2c", "p2c_ewma", "latency_predicting", "adaptive",
                                                "consistent_hash"), doc="default routing algorithm")
    health_check_interval_s: float = _opt(5.0, lo=0.05, hi=3600.0, doc="active check period")
    health_check_timeout_s: float = _opt(1.0, lo=0.01, hi=600.0, doc="active check timeout")
    healthy_threshold: int = _opt(2, lo=1, hi=100, doc="passes to mark healthy")
    unhealthy_threshold: int = _opt(3, lo=1, hi=100, doc="failures to mark unhealthy")
    consecutive_failures: int = _opt(2, lo=1, hi=10000, doc="passive ejection trigger")
    failure_rate_threshold: float = _opt(0.5, lo=0.0, hi=1.0, doc="passive ejection by window failure rate")
    base_ejection_s: float = _opt(1.0, lo=0.01, hi=3600.0, doc="first ejection period, grows per ejection")
    max_ejection_percent: float = _opt(50.0, lo=0.0, hi=100.0, doc="panic threshold")
    session_affinity: bool = _opt(True, doc="route a session id to the same backend")
    failure_window: int = _opt(32, lo=1, hi=100000, doc="outcomes in the passive failure-rate window")
    failure_min_requests: int = _opt(10, lo=1, hi=100000, doc="outcomes needed before the rate can eject")
    max_ejection_s: float = _opt(30.0, lo=0.01, hi=86400.0, doc="cap of the growing ejection period")
    half_open_probes: int = _opt(1, lo=1, hi=1000, doc="requests admitted to a backend after its ejection")
    ewma_tau_s: float = _opt(1.0, lo=0.001, hi=3600.0, doc="decay time of the peak-EWMA latency")
    failure_penalty_s: float = _opt(1.0, lo=0.0, hi=3600.0, doc="latency a failed request counts as")
    namespace: str = _opt("", doc="share ejections, outstanding counts and published load with every "
                                  "balancer of this namespace on the host ('' = this process only)")


@dataclass(frozen=True)
class EliminatorSection(_Section):
    """``bottleneck_eliminator.json``: automatic bottleneck elimination."""

    FILE: ClassVar[str] = "bottleneck_eliminator.json"

    mode: str = _opt("balanced", choices=MODE_NAMES, doc="which risk levels run automatically")
    auto_fix: bool = _opt(False, doc="apply allowed actions, not only recommend them")
    prediction_enabled: bool = _opt(True, doc="act on predicted exhaustion")
    validation_window_s: float = _opt(10.0, lo=0.0, hi=3600.0, doc="measure this long after an action")
    rollback_threshold: float = _opt(0.05, lo=0.0, hi=10.0, doc="relative worsening that rolls back")
    min_improvement: float = _opt(0.0, lo=0.0, hi=1.0, doc="relative fall of the target metric that counts as better")
    validation_interval_s: float = _opt(1.0, lo=0.01, hi=600.0, doc="sampling period inside a validation window")
    background_nice: int = _opt(10, lo=0, hi=19, doc="nice given to background agents that hog a CPU")
    boost_nice: int = _opt(-5, lo=-20, hi=0, doc="nice given to a starved agent (medium risk)")
    prediction_horizon_s: float = _opt(600.0, lo=1.0, hi=86400.0, doc="act when exhaustion is predicted sooner")
    audit_size: int = _opt(1000, lo=1, hi=1_000_000, doc="decisions kept in the in-memory audit list")
    restart_leaking_agents: bool = _opt(False, doc="operator's consent: a leaking agent may be restarted "
                                               "through the agent.restart hook (high risk)")
    cache_shrink_fraction: float = _opt(0.5, lo=0.05, hi=0.95,
                                        doc="share of the shared cache tiers' entries the cache.shrink remedy evicts")
    balancer_table: str | None = _opt(None, doc="host-wide balancer table shed/drain act on; None: the cache "
                                                "namespace")
    drain_s: float = _opt(60.0, lo=1.0, hi=86400.0, doc="how long a drained backend stays out (its undo ends it)")
    anomaly_interval_s: float = _opt(30.0, lo=0.0, hi=86400.0,
                                     doc="the host service scores agents with IsolationForest this often; 0: never")


#: The former name of :class:`HardwareSection`, kept for code that imports it.
HardwareConfig = HardwareSection


#: Mode presets: the values each mode sets before the files are read. docs/modes.md shows the same table.
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "conservative": {
        "hardware": {"max_cpu_usage": 75.0, "max_memory_usage": 75.0, "oversubscription": 1.0,
                     "nice_min": 0, "nice_max": 5, "scheduler_policy": "SCHED_OTHER",
                     "enable_transparent_hugepages": False, "exclusive_priority": 10,
                     "affinity_strategy": "shared", "exclusive_pool_fraction": 0.25, "manage_ionice": False,
                     "idle_priority_max": -1, "use_cgroups": False,
                     "cache_size_mb": 384, "prefetch_depth": 1, "shared_memory_size_mb": 512},
        "eliminator": {"mode": "conservative", "auto_fix": False},
        "cache": {"l1_size": 32 * 1024**2, "l2_size": 128 * 1024**2, "l3_size": 256 * 1024**2,
                  "prefetch_depth": 1},
    },
    "balanced": {
        "hardware": {"max_cpu_usage": 85.0, "max_memory_usage": 85.0, "oversubscription": 2.0,
                     "nice_min": -5, "nice_max": 10, "scheduler_policy": "SCHED_OTHER",
                     "enable_transparent_hugepages": False, "exclusive_priority": 8,
                     "affinity_strategy": "static", "exclusive_pool_fraction": 0.5, "manage_ionice": True,
                     "idle_priority_max": -1, "use_cgroups": False,
                     "cache_size_mb": 1280, "prefetch_depth": 3, "shared_memory_size_mb": 1024},
        "eliminator": {"mode": "balanced", "auto_fix": True},
        "cache": {"l1_size": 64 * 1024**2, "l2_size": 256 * 1024**2, "l3_size": 1024**3,
                  "prefetch_depth": 3},
    },
    "aggressive": {
        "hardware": {"max_cpu_usage": 95.0, "max_memory_usage": 92.0, "oversubscription": 4.0,
                     "nice_min": -10, "nice_max": 19, "scheduler_policy": "SCHED_BATCH",
                     "enable_transparent_hugepages": True, "exclusive_priority": 7,
                     "affinity_strategy": "static", "exclusive_pool_fraction": 0.75, "manage_ionice": True,
                     "idle_priority_max": 1, "use_cgroups": True,
                     "cache_size_mb": 5120, "prefetch_depth": 5, "shared_memory_size_mb": 4096},
        "eliminator": {"mode": "aggressive", "auto_fix": True},
        "cache": {"l1_size": 256 * 1024**2, "l2_size": 1024**3, "l3_size": 4 * 1024**3,
                  "prefetch_depth": 5},
    },
}

#: Section attribute -> (section class, file name).
SECTION_FILES: dict[str, type[_Section]] = {
    "hardware": HardwareSection,
    "cache": CacheSection,
    "balancer": BalancerSection,
    "eliminator": EliminatorSection,
}


@dataclass(frozen=True)
class HwoptConfig:
    """The whole configuration: one validated section per component."""

    hardware: HardwareSection = field(default_factory=HardwareSection)
    cache: CacheSection = field(default_factory=CacheSection)
    balancer: BalancerSection = field(default_factory=BalancerSection)
    eliminator: EliminatorSection = field(default_factory=EliminatorSection)

    @property
    def mode(self) -> str:
        return self.hardware.mode

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).to_dict() for name in SECTION_FILES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HwoptConfig:
        """The configuration of :meth:`to_dict`'s shape (what ``GET /api/config`` serves), validated.

        Raises:
            ConfigError: an unknown section or key, or a bad value (naming it).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping of sections, got {type(data).__name__}")
        unknown = set(data) - set(SECTION_FILES)
        if unknown:
            raise ConfigError(f"unknown section; allowed: {', '.join(SECTION_FILES)}", key=sorted(unknown)[0])
        sections: dict[str, Any] = {name: section_cls.from_mapping(data.get(name, {}), prefix=f"{name}.")
                                    for name, section_cls in SECTION_FILES.items()}
        return cls(**sections)

    @classmethod
    def for_mode(cls, mode: str) -> HwoptConfig:
        """Defaults with the preset of ``mode`` applied."""
        if mode not in MODES:
            raise ConfigError(f"{mode!r} is not one of {', '.join(map(repr, MODE_NAMES))}", key="mode")
        preset = MODES[mode]
        sections: dict[str, Any] = {}
        for name, section_cls in SECTION_FILES.items():
            values = dict(preset.get(name, {}))
            if name == "hardware":
                values["mode"] = mode
            sections[name] = section_cls.from_mapping(values)
        return cls(**sections)


#: What a part's constructor takes besides its own section object (see :func:`section_of`).
ConfigSource: TypeAlias = "HwoptConfig | Mapping[str, Any] | None"


def section_of(config: _T | ConfigSource, section: type[_T], *, name: str = "config") -> _T:
    """The ``section`` a part reads, from whatever the caller gave its constructor.

    Accepts the whole :class:`HwoptConfig` (its section of that type is taken), the section object itself, a
    mapping of the section's keys (validated, over the defaults), or ``None`` (the defaults). ``name`` is the
    parameter's name in the error message.

    Raises:
        ConfigError: anything else, or a mapping with an unknown key or a bad value (naming the key).
    """
    if config is None:
        return section()
    if isinstance(config, section):
        return config
    if isinstance(config, HwoptConfig):
        for attr, cls in SECTION_FILES.items():
            if cls is section:
                found: _T = getattr(config, attr)
                return found
        raise ConfigError(f"{section.__name__} is not a section of HwoptConfig; sections: "
                          f"{', '.join(c.__name__ for c in SECTION_FILES.values())}")
    if isinstance(config, Mapping):
        return section.from_mapping(config)
    raise ConfigError(f"{name} must be an HwoptConfig, a {section.__name__}, a mapping of its keys or None, "
                      f"got {type(config).__name__}")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                          file=str(path)) from exc


def load_config(config_dir: str | os.PathLike[str] | None = None, *, mode: str | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> HwoptConfig:
    """Resolve the configuration: defaults, then the mode preset, then the files, then ``overrides``.

    Args:
        config_dir: directory holding any of the section files; ``None`` reads no file. A directory that
            does not exist is an error (a typo should not silently mean "defaults").
        mode: preset to start from; ``None`` takes ``mode`` from ``hardware_optimization.json``, else
            ``"balanced"``.
        overrides: ``{"hardware": {...}, "cache": {...}, ...}`` applied last (for CLI flags).

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value, unreadable or invalid file.
    """
    raw: dict[str, tuple[Any, str]] = {}
    if config_dir is not None:
        base = Path(config_dir)
        if not base.is_dir():
            raise ConfigError("config directory does not exist or is not a directory", file=str(base))
        for name, section_cls in SECTION_FILES.items():
            path = base / section_cls.FILE
            if path.exists():
                raw[name] = (_read_json(path), str(path))
    file_mode = None
    if "hardware" in raw and isinstance(raw["hardware"][0], Mapping):
        file_mode = raw["hardware"][0].get("mode")
    chosen = mode or file_mode or "balanced"
    if not isinstance(chosen, str) or chosen not in MODES:
        raise ConfigError(f"{chosen!r} is not one of {', '.join(map(repr, MODE_NAMES))}",
                          file=raw["hardware"][1] if "hardware" in raw else None, key="mode")
    config = HwoptConfig.for_mode(chosen)
    sections = {name: getattr(config, name) for name in SECTION_FILES}
    for name, (data, source) in raw.items():
        if name == "hardware" and isinstance(data, Mapping) and mode is not None:
            data = {**data, "mode": mode}
        sections[name] = SECTION_FILES[name].from_mapping(data, file=source, base=sections[name])
    for name, values in (overrides or {}).items():
        if name not in SECTION_FILES:
            raise ConfigError(f"unknown section; allowed: {', '.join(SECTION_FILES)}", key=name)
        sections[name] = SECTION_FILES[name].from_mapping(values, base=sections[name], prefix=f"{name}.")
    depth = _prefetch_depth(raw, overrides)
    if depth is not None:
        sections["hardware"] = dataclasses.replace(sections["hardware"], prefetch_depth=depth)
        sections["cache"] = dataclasses.replace(sections["cache"], prefetch_depth=depth)
    return HwoptConfig(**sections)


def _prefetch_depth(raw: Mapping[str, tuple[Any, str]],
                    overrides: Mapping[str, Mapping[str, Any]] | None) -> int | None:
    """``hardware.prefetch_depth`` and ``cache.prefetch_depth`` are one setting (the reference config writes the
    first, the cache section the second): the value given last wins — overrides over files, and the cache file,
    the more specific, over the hardware file. ``None``: neither was given (the mode's preset stands)."""
    for source in ((overrides or {}).get("cache"), (overrides or {}).get("hardware"),
                   raw.get("cache", ({}, ""))[0], raw.get("hardware", ({}, ""))[0]):
        if isinstance(source, Mapping) and "prefetch_depth" in source:
            return int(source["prefetch_depth"])
    return None
