"""Bounded numpy ring buffers: a long profiling run keeps the last ``capacity`` samples in constant memory."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["Ring"]


class Ring:
    """A fixed-capacity ring of rows of shape ``row_shape`` plus a timestamp per row.

    Rows are written in place (no per-sample allocation); :meth:`window` returns the last ``n`` rows in time
    order as a copy. ``widen(axis1)`` grows the second axis (more agents) keeping history, with NaN filling.
    """

    def __init__(self, capacity: int, row_shape: tuple[int, ...], dtype: type = np.float32) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise InvalidArgumentError(f"capacity must be an integer >= 2, got {capacity!r}")
        self.capacity = capacity
        self._data: np.ndarray = np.full((capacity, *row_shape), np.nan, dtype=dtype)
        self._times = np.full(capacity, np.nan, dtype=np.float64)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes + self._times.nbytes)

    def push(self, t: float, row: np.ndarray) -> None:
        """Append one row taken at time ``t`` (overwrites the oldest when full)."""
        i = self._next
        self._data[i] = row
        self._times[i] = t
        self._next = (i + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def window(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(times, rows) of the last ``n`` samples (all kept when ``None``), oldest first."""
        k = self._count if n is None else max(0, min(int(n), self._count))
        idx = (self._next - k + np.arange(k)) % self.capacity
        return self._times[idx].copy(), self._data[idx].copy()

    def last(self) -> np.ndarray | None:
        """The newest row (a view) or ``None`` when empty."""
        if self._count == 0:
            return None
        return self._data[(self._next - 1) % self.capacity]

    def widen(self, size: int) -> None:
        """Grow axis 1 to ``size`` entries (no-op when already that wide)."""
        cur = self._data.shape[1]
        if size <= cur:
            return
        new = np.full((self.capacity, size, *self._data.shape[2:]), np.nan, dtype=self._data.dtype)
        new[:, :cur] = self._data
        self._data = new
