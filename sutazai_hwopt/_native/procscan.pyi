"""Per-process /proc scanner over held file descriptors (compiled core of the profiler)."""

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

COLUMNS: tuple[str, ...]
NCOLUMNS: int
FILES: tuple[str, ...]

def parse(kind: str, data: bytes, row: npt.NDArray[np.float64]) -> int:
    """Parse one file's text into ``row`` with the scanner's C parser."""

@disjoint_base
class ProcScanner:
    """Held /proc descriptors for up to ``capacity`` processes and a C parser over them."""

    @property
    def capacity(self) -> int: ...
    @property
    def open_fds(self) -> int: ...
    def __init__(self, capacity: int) -> None: ...
    def open_slot(self, slot: int, pid: int, with_status: bool = True, with_children: bool = False) -> bool: ...
    def close_slot(self, slot: int) -> None: ...
    def is_open(self, slot: int) -> bool: ...
    def close_all(self) -> None: ...
    def scan(self, out: npt.NDArray[np.float64], ok: npt.NDArray[np.uint8], with_status: bool = True) -> int: ...
    def scan_one(
        self, slot: int, out: npt.NDArray[np.float64], ok: npt.NDArray[np.uint8], with_status: bool = True
    ) -> bool: ...
