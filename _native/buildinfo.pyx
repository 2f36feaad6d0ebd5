"""Facts about how the compiled cores were built.

It is the smallest compiled module and exists so that the package (and a test) can tell, without importing
any heavy core, that the extension modules were really compiled and whether this is a debug build.
"""

from debug cimport HWOPT_DEBUG

cdef extern from *:
    const char* CYTHON_VERSION_STR "SUTAZAI_HWOPT_CYTHON_VERSION"

#: True when built with ``SUTAZAI_HWOPT_DEBUG=1`` (asserts, invariant checks, resource counters on).
DEBUG_BUILD = bool(HWOPT_DEBUG)

#: The Cython version that generated the C code.
CYTHON_VERSION = CYTHON_VERSION_STR.decode("ascii")


def is_compiled() -> bool:
    """Return True; a pure-Python stand-in would not be a compiled module (checked by ``__file__``)."""
    return cython_compiled()


cdef bint cython_compiled():
    return True
