"""Performance profiler: cheap 1 Hz sampling of the host and every agent, bottleneck detection, prediction.

See docs/profiler.md. The hot path is the compiled scanner :mod:`sutazai_hwopt._native.procscan`.
"""

from __future__ import annotations

from .detect import BOTTLENECK_TYPES, Bottleneck, Thresholds, detect_bottlenecks
from .detectors import Detector, DetectorRegistry
from .profiler import PerformanceProfiler, Sample

__all__ = ["BOTTLENECK_TYPES", "Bottleneck", "Detector", "DetectorRegistry", "PerformanceProfiler", "Sample",
           "Thresholds", "detect_bottlenecks"]
