"""The prefetch governor's off path, compiled (count, remember the agent's last key, sample into the sketch)."""

from collections.abc import Callable, Hashable
from typing import Any

from typing_extensions import disjoint_base

@disjoint_base
class OffPath:
    """Counts accesses, remembers each agent's last key, samples (previous key, key) pairs into a sketch."""

    n: int
    next_sample: int
    window_end: int
    sampled: int
    known: int
    repeats: int
    miss_repeats: int
    sketch_size: int
    @property
    def last(self) -> dict[Any, Any]: ...
    @property
    def sketch(self) -> dict[Any, Any]: ...
    window: Any
    def __init__(self, strides: list[int], sketch_size: int, window_end: int,
                 window: Callable[[int], object]) -> None: ...
    def observe(self, agent: Hashable, key: Hashable, miss: bool) -> None:
        """One access of ``agent`` to ``key`` (``miss``: it missed every level)."""
