"""Configuration: defaults, mode presets, files, and every kind of bad input."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sutazai_hwopt.config import MODES, SECTION_FILES, HardwareSection, HwoptConfig, load_config
from sutazai_hwopt.errors import ConfigError, HwoptError


def write(d: Path, name: str, data: object) -> Path:
    path = d / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_defaults_are_balanced() -> None:
    """With no directory and no mode the balanced preset applies."""
    cfg = load_config()
    assert cfg.mode == "balanced"
    assert cfg.hardware.max_cpu_usage == MODES["balanced"]["hardware"]["max_cpu_usage"]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_applies_its_preset(mode: str) -> None:
    """Every value a preset names is the value the resolved config holds."""
    cfg = load_config(mode=mode)
    for section, values in MODES[mode].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (mode, section, key)


def test_files_override_the_mode(tmp_path: Path) -> None:
    """A key in a file wins over the preset; keys it does not name keep the preset value."""
    write(tmp_path, "hardware_optimization.json", {"mode": "aggressive", "max_cpu_usage": 50})
    write(tmp_path, "cache_system.json", {"l1_size": 1024})
    cfg = load_config(tmp_path)
    assert cfg.mode == "aggressive"
    assert cfg.hardware.max_cpu_usage == 50.0
    assert cfg.hardware.scheduler_policy == MODES["aggressive"]["hardware"]["scheduler_policy"]
    assert cfg.cache.l1_size == 1024


def test_explicit_mode_beats_the_file_mode(tmp_path: Path) -> None:
    """`mode=` given in code (the CLI's --mode) wins over the file's mode key."""
    write(tmp_path, "hardware_optimization.json", {"mode": "aggressive"})
    assert load_config(tmp_path, mode="conservative").mode == "conservative"


def test_overrides_apply_last(tmp_path: Path) -> None:
    """Overrides (CLI flags) win over files."""
    write(tmp_path, "load_balancer.json", {"health_check_interval_s": 2})
    cfg = load_config(tmp_path, overrides={"balancer": {"health_check_interval_s": 9.5}})
    assert cfg.balancer.health_check_interval_s == 9.5


@pytest.mark.parametrize(
    ("filename", "data", "key", "fragment"),
    [
        ("hardware_optimization.json", {"max_cpu_usage": 150}, "max_cpu_usage", "out of range"),
        ("hardware_optimization.json", {"max_cpu_usage": "high"}, "max_cpu_usage", "expected a number"),
        ("hardware_optimization.json", {"enable_numa": 1}, "enable_numa", "expected a boolean"),
        ("hardware_optimization.json", {"prefetch_depth": 2.5}, "prefetch_depth", "expected an integer"),
        ("hardware_optimization.json", {"cache_size_mb": True}, "cache_size_mb", "expected an integer"),
        ("hardware_optimization.json", {"scheduler_policy": "FAST"}, "scheduler_policy", "not one of"),
        ("hardware_optimization.json", {"mode": "turbo"}, "mode", "not one of"),
        ("hardware_optimization.json", {"max_cpu": 50}, "max_cpu", "unknown key"),
        ("cache_system.json", {"l1_size": -1}, "l1_size", "out of range"),
        ("cache_system.json", {"policy": "fifo"}, "policy", "not one of"),
        ("load_balancer.json", {"algorithm": "random"}, "algorithm", "not one of"),
        ("bottleneck_eliminator.json", {"auto_fix": "yes"}, "auto_fix", "expected a boolean"),
        ("bottleneck_eliminator.json", {"rollback_threshold": float("nan")}, "rollback_threshold", "finite"),
    ],
)
def test_bad_values_name_file_key_and_reason(tmp_path: Path, filename: str, data: dict, key: str,
                                             fragment: str) -> None:
    """Each kind of bad value raises ConfigError carrying the file, the key and what is allowed."""
    path = tmp_path / filename
    path.write_text(json.dumps(data, allow_nan=True))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert fragment in err.reason
    assert str(path) in str(err) and key in str(err)
    assert isinstance(err, ValueError) and isinstance(err, HwoptError)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    """A syntax error reports the file and the line."""
    path = write(tmp_path, "cache_system.json", '{\n  "l1_size": ,\n}')
    with pytest.raises(ConfigError, match="line 2") as info:
        load_config(tmp_path)
    assert info.value.file == str(path)


def test_non_object_file(tmp_path: Path) -> None:
    """A file holding a list instead of an object is rejected."""
    write(tmp_path, "load_balancer.json", [1, 2])
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a 0000 file")
def test_unreadable_file(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    """A file that cannot be read raises ConfigError naming it."""
    path = write(tmp_path, "cache_system.json", {})
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_unreadable_file_directory_in_place_of_file(tmp_path: Path) -> None:
    """A directory where a config file should be is unreadable and reported as such."""
    (tmp_path / "cache_system.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path)
    assert info.value.file and info.value.file.endswith("cache_system.json")


def test_missing_directory(tmp_path: Path) -> None:
    """A config directory that does not exist is an error, not silent defaults."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope")


def test_unknown_override_section() -> None:
    """Overrides for a section that does not exist are rejected."""
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(overrides={"gpu": {}})


def test_cross_field_check() -> None:
    """nice_min above nice_max is rejected."""
    with pytest.raises(ConfigError, match="nice_min"):
        load_config(overrides={"hardware": {"nice_min": 10, "nice_max": 0}})


def test_roundtrip_through_files(tmp_path: Path) -> None:
    """Writing every section of a resolved config to files and loading them gives the same config."""
    cfg = load_config(mode="aggressive")
    for name, section_cls in SECTION_FILES.items():
        write(tmp_path, section_cls.FILE, getattr(cfg, name).to_dict())
    assert load_config(tmp_path) == cfg


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_range_check_matches_bounds(value: float) -> None:
    """max_cpu_usage is accepted exactly as a fraction in [0.05, 1] or a percent in [5, 100]; stored as percent."""
    try:
        cfg = load_config(overrides={"hardware": {"max_cpu_usage": value}})
    except ConfigError:
        assert not (0.05 <= value <= 1.0 or 5.0 <= value <= 100.0)
    else:
        if value <= 1.0:
            assert value >= 0.05 and cfg.hardware.max_cpu_usage == float(Decimal(repr(value)) * 100)
        else:
            assert 5.0 <= value <= 100.0 and cfg.hardware.max_cpu_usage == value


@pytest.mark.parametrize(("given", "stored"), [(0.85, 85.0), (0.8, 80.0), (1, 100.0), (0.05, 5.0), (85, 85.0),
                                               (5, 5.0), (100, 100.0), (0.07, 7.0), (0.29, 29.0)])
def test_usage_limits_fraction_or_percent(given: float, stored: float, tmp_path: Path) -> None:
    """The seed's fractions convert exactly to the canonical percent; percents stay; a file and a section agree."""
    write(tmp_path, "hardware_optimization.json", {"max_cpu_usage": given, "max_memory_usage": given})
    cfg = load_config(tmp_path)
    assert cfg.hardware.max_cpu_usage == stored and cfg.hardware.max_memory_usage == stored
    assert HardwareSection(max_cpu_usage=given).max_cpu_usage == stored
    assert load_config(overrides={"hardware": cfg.hardware.to_dict()}) == cfg   # converting again changes nothing


@pytest.mark.parametrize(("given", "reason"), [(0, "out of range"), (-0.5, "out of range"), (150, "out of range"),
                                               (1.5, "ambiguous"), (3, "ambiguous"), (0.01, "below the 5%"),
                                               (True, "expected a number")])
def test_usage_limits_refused(given: object, reason: str, tmp_path: Path) -> None:
    """Out-of-range and ambiguous usage limits raise ConfigError naming the file, key and what is allowed."""
    write(tmp_path, "hardware_optimization.json", {"max_memory_usage": given})
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(tmp_path)
    assert "max_memory_usage" in str(info.value) and "hardware_optimization.json" in str(info.value)


def test_for_mode_rejects_unknown() -> None:
    """HwoptConfig.for_mode refuses a mode that is not one of the three."""
    with pytest.raises(ConfigError):
        HwoptConfig.for_mode("fast")


# -- section_of: one way for every part to take its configuration ---------------------------------------------
from sutazai_hwopt.config import (  # noqa: E402
    BalancerSection,
    CacheSection,
    EliminatorSection,
    HardwareConfig,
    section_of,
)


def test_section_of_accepts_the_whole_config_the_section_a_mapping_or_none() -> None:
    whole = load_config(mode="aggressive")
    assert section_of(whole, HardwareSection) is whole.hardware
    assert section_of(whole, CacheSection) is whole.cache
    assert section_of(whole.balancer, BalancerSection) is whole.balancer
    assert section_of(None, EliminatorSection) == EliminatorSection()
    assert section_of({"background_nice": 3}, EliminatorSection).background_nice == 3
    assert HardwareConfig is HardwareSection  # the former name still imports


@pytest.mark.parametrize(("value", "match"), [
    (42, r"config must be an HwoptConfig, a CacheSection, a mapping of its keys or None, got int"),
    (BalancerSection(), r"got BalancerSection"),  # another part's section
    ({"l1_size": -1}, r"l1_size.*out of range"),
    ({"no_such_key": 1}, r"no_such_key.*unknown key"),
])
def test_section_of_names_what_was_wrong(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        section_of(value, CacheSection)  # type: ignore[arg-type]


def test_every_part_takes_its_section_the_same_way(tmp_path: Path) -> None:
    """The constructors that read a section all go through section_of: whole config, section, mapping, None."""
    from sutazai_hwopt import BottleneckEliminator, DynamicLoadBalancer, MemoryPoolManager, PerformanceProfiler
    from sutazai_hwopt.resources import ResourcePoolCoordinator

    whole = load_config(mode="conservative")
    for value in (whole, whole.eliminator, {"mode": "conservative", "auto_fix": False}):
        assert BottleneckEliminator(value).settings.mode == "conservative"  # type: ignore[arg-type]
    for value in (whole, whole.balancer, {"algorithm": whole.balancer.algorithm}):
        assert DynamicLoadBalancer(value).config == whole.balancer  # type: ignore[arg-type]
    for value in (whole, whole.hardware, {"shared_memory_size_mb": whole.hardware.shared_memory_size_mb}):
        assert MemoryPoolManager("sectiontest", config=value).default_pool_size == 512 * 1024**2
        coord = ResourcePoolCoordinator(value, state_dir=str(tmp_path))  # type: ignore[arg-type]
        assert coord.config.shared_memory_size_mb == 512
    assert PerformanceProfiler(config={"sample_interval_s": 0.5}).interval_s == 0.5
    with pytest.raises(ConfigError, match="settings must be"):
        BottleneckEliminator(whole.cache)  # type: ignore[arg-type]
