# The one definition of the codes the compiled balancer core and its Python shell share.
#
# Included by balancer_core.pyx: C code uses the enums, and the two dicts below expose the same values to
# Python, where sutazai_hwopt.balancer.state.BackendState and sutazai_hwopt.balancer.algorithms.AlgorithmCode
# are built from them. tests/balancer/test_parity.py parses this file and fails if a constant here, the
# dicts and the Python enums disagree, so a code is added or renumbered here and nowhere else.

# Backend outlier states (Backend.state).
cdef enum:
    HEALTHY = 0
    EJECTED = 1
    PROBING = 2

# Algorithm codes (the ``native_code`` of the Python algorithm classes; the third field of a route entry).
cdef enum:
    ALG_PY = 0        # no compiled twin: the shell runs the algorithm's Python ``select``
    ALG_ADAPTIVE = 1
    ALG_RR = 2
    ALG_P2C = 3
    ALG_LC = 4

#: state name (as analytics() and state_of() report it) -> Backend.state code.
BACKEND_STATES = {"healthy": HEALTHY, "ejected": EJECTED, "probing": PROBING}

#: algorithm name (Algorithm.name; "python": none) -> code of its compiled select.
ALGORITHM_CODES = {"python": ALG_PY, "adaptive": ALG_ADAPTIVE, "round_robin": ALG_RR, "p2c": ALG_P2C,
                   "least_connections": ALG_LC}
