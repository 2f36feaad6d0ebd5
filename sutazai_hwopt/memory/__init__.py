"""Shared-memory pools: a compiled, crash-safe allocator in named segments.

:mod:`.segment` names and maps segments; the allocator and robust lock are
:class:`~sutazai_hwopt._native.pool_alloc.SegmentHeap`.
"""
