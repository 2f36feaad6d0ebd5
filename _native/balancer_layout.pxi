# The one definition of the host-wide shared balancer table's layout (64-bit words).
#
# Included by balancer_core.pyx: the compiled select / record / reporter index words with these enums, and
# SHARED_LAYOUT exposes the same values to sutazai_hwopt/balancer/shared.py, which creates and attaches the
# segment and builds its constants from that dict (tests/balancer/test_reporter.py checks the two agree).
# Changing a word's meaning or the slot size bumps LAYOUT_VERSION (an old attacher then refuses the table).

cdef enum:
    LAYOUT_VERSION = 2
    HEADER_WORDS = 8      # word 0 magic, 1 layout version, 2 slot count, 3 ejection version, 4-7 reserved
    H_VERSION = 3
    SLOT_WORDS = 16       # one slot per backend, starting at word HEADER_WORDS + SLOT_WORDS x s
    S_HASH = 0            # XXH64 of the service id (0: free)
    S_EJECT = 1           # published ejection end (ns of the balancers' clock)
    S_OUT = 2             # requests in flight here summed over every balancer process (clients' count)
    S_PROBE = 3           # half-open probe claimed until (ns of the balancers' clock; 0: nobody probes)
    S_PID = 4             # reporter: pid of the backend process publishing its load (0: none)
    S_START = 5           # reporter: its process start time (sutazai_hwopt.procid), so a reused pid is no one
    S_INFL = 6            # reporter: requests inside serving() (being served or waiting inside the backend)
    S_QUEUE = 7           # reporter: requests waiting before serving() (the backend's own queue)
    S_SVC = 8             # reporter: fast EWMA of the service time, ns (1/8 per sample)
    S_SVC_BASE = 9        # reporter: slow EWMA of the service time, ns (1/512 per sample): what is normal
    S_DONE = 10           # reporter: requests completed
    S_FAILS = 11          # reporter: requests that failed
    S_FAIL_RUN = 12       # reporter: consecutive failures (0 after a success)
    S_WORKERS = 13        # reporter: requests it serves in parallel (service rate = workers / S_SVC)
    S_WORK = 14           # clients: their in-flight requests here weighted by type cost, x WORK_SCALE, summed
    WORK_SCALE = 1024

#: name -> value of every constant above (the Python side's single source).
SHARED_LAYOUT = {"LAYOUT_VERSION": LAYOUT_VERSION, "HEADER_WORDS": HEADER_WORDS, "H_VERSION": H_VERSION,
                 "SLOT_WORDS": SLOT_WORDS, "S_HASH": S_HASH, "S_EJECT": S_EJECT, "S_OUT": S_OUT,
                 "S_PROBE": S_PROBE, "S_PID": S_PID, "S_START": S_START, "S_INFL": S_INFL, "S_QUEUE": S_QUEUE,
                 "S_SVC": S_SVC, "S_SVC_BASE": S_SVC_BASE, "S_DONE": S_DONE, "S_FAILS": S_FAILS,
                 "S_FAIL_RUN": S_FAIL_RUN, "S_WORKERS": S_WORKERS, "S_WORK": S_WORK,
                 "WORK_SCALE": WORK_SCALE}
