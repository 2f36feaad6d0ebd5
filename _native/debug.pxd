# Build-mode switch shared by every compiled core (cimport it; it generates no runtime import).
# SUTAZAI_HWOPT_DEBUG is defined to 1 by setup.py when the env var SUTAZAI_HWOPT_DEBUG=1 is set at build time;
# cores guard their internal invariant checks and resource counters with `if HWOPT_DEBUG:`, which the C
# compiler folds away in a release build.
cdef extern from *:
    const int HWOPT_DEBUG "SUTAZAI_HWOPT_DEBUG"
