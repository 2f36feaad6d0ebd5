"""The host service: one daemon per host that owns placement, profiling and the eliminator loop, serves the
REST API, Prometheus metrics and the live dashboard, and is driven by ``sutazai-hwopt deploy/status/stop``.

Agents register with :func:`connect`; :func:`fleet_config` gives any process the daemon's configuration.
Importing this package imports no server dependency; ``api``, ``daemon`` and ``metrics`` need the ``[server]``
extra.
"""

from .client import HostClient, connect, fleet_config
from .runtime import RuntimeDir

__all__ = ["HostClient", "RuntimeDir", "connect", "fleet_config"]
