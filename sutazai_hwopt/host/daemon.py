"""The host service daemon: ``python -m sutazai_hwopt.host.daemon`` (started by ``sutazai-hwopt deploy``).

One process per host. It writes its pid file, establishes the baseline, applies the mode, listens on loopback
(unless told otherwise) and samples at 1 Hz. On SIGTERM/SIGINT it stops serving, rolls back every setting it
applied (from the journal), and removes its pid and endpoint files. If it is SIGKILLed instead, the journal
stays on disk and the next ``deploy`` or ``stop`` rolls it back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Sequence

from ..config import HwoptConfig, load_config
from ..logs import configure_file_logging, get_logger
from .runtime import RuntimeDir

__all__ = ["config_from_args", "main", "serve"]

log = get_logger("master")


def journal_dir(runtime: RuntimeDir) -> str:
    """Where the daemon's journal of applied settings lives (private, beside the pid file)."""
    return str(runtime.path / "journal")


def _bind(host: str, port: int, *, fallback: int = 0) -> socket.socket:
    """Listen on ``host:port``; if it is taken, on the next of ``fallback`` ports, then on any free one.

    The configured port is the default (so the dashboard's address stays the same from one deploy to the next);
    an explicit ``--port`` passes ``fallback=0`` and fails when taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port]
    if port and fallback:
        candidates += [*range(port + 1, min(port + 1 + fallback, 65536)), 0]
    for i, candidate in enumerate(candidates):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or i == len(candidates) - 1:
                raise
            continue
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    raise AssertionError("unreachable")


async def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app
    from .service import HostService

    runtime = RuntimeDir(args.runtime_dir)
    runtime.ensure()
    config = config_from_args(args)
    log_dir = args.log_dir or config.hardware.log_dir or str(runtime.path / "logs")
    configure_file_logging(log_dir, level=config.hardware.log_level)
    runtime.write_pid(os.getpid())
    token = runtime.read_token()
    service = HostService(config, auto_fix=args.auto_fix or None, enable_all=args.enable_all,
                                 state_dir=journal_dir(runtime))
    sock = None
    try:
        service.own_namespace()   # the namespace's shared tiers and default pools, from this configuration
        service.establish_baseline()
        service.apply_mode()
        host = args.host or config.hardware.bind_host
        sock = (_bind(host, args.port) if args.port is not None
                else _bind(host, config.hardware.port, fallback=10))
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(create_app(service, token), log_level="warning",
                                               lifespan="off", access_log=False))
        runtime.write_endpoint(host, port, os.getpid())
        log.info("host service listening on http://%s:%d/ (mode %s)", host, port, config.mode)
        sampler = asyncio.create_task(_sample_forever(service, config.hardware.sample_interval_s))
        # uvicorn captures SIGTERM/SIGINT while serving and re-raises them to the previous handlers when it
        # returns; ignore-handlers here let that re-raise fall through to the rollback below instead of
        # terminating the process before it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        try:
            await server.serve(sockets=[sock])
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    finally:
        result = service.close(rollback=True)
        log.info("host service stopped; %s", result)
        if sock is not None:
            sock.close()
        runtime.clear()
    return 0


async def _sample_forever(service: object, interval: float) -> None:
    from .service import HostService

    assert isinstance(service, HostService)
    while True:
        try:
            await asyncio.to_thread(service.tick)
        except Exception:  # a bad pass must not stop the sampler; it is logged with its traceback
            log.exception("sampling pass failed")
        await asyncio.sleep(interval)


def config_from_args(args: argparse.Namespace) -> HwoptConfig:
    """The configuration a daemon started with ``args`` runs: the mode's preset, then the files, then the flags."""
    return load_config(args.config, mode=args.mode, overrides=_overrides(args))


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The deploy flags as configuration overrides (applied after the mode and the files: flags win)."""
    from .namespace import ENABLE_ALL

    out: dict[str, dict[str, object]] = {k: dict(v) for k, v in ENABLE_ALL.items()} if args.enable_all else {}
    cache: dict[str, object] = {}
    if args.namespace is not None:
        cache["namespace"] = args.namespace
    if args.l1_size is not None:
        cache["l1_size"] = args.l1_size
    if args.l2_size is not None:
        cache["l2_size"] = args.l2_size
    if args.prefetch_depth is not None:
        cache["prefetch_depth"] = args.prefetch_depth
    if args.enable_ml:
        cache["enable_prefetch"] = True
    if args.enable_compression:
        cache["compression"] = "lz4"
    hardware: dict[str, object] = {}
    if args.pool_size is not None:
        hardware["shared_memory_size_mb"] = args.pool_size
    for name, values in (("cache", cache), ("hardware", hardware),
                         ("eliminator", {"auto_fix": True} if args.auto_fix else {})):
        if values:
            out[name] = {**out.get(name, {}), **values}
    return out


def add_daemon_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``deploy`` and the daemon itself."""
    p.add_argument("--mode", choices=("conservative", "balanced", "aggressive"), default=None,
                   help="optimization mode (default: the config file's, else balanced)")
    p.add_argument("--config", metavar="DIR", help="configuration directory (JSON files)")
    p.add_argument("--log-dir", metavar="DIR", help="write <component>.log files here")
    p.add_argument("--runtime-dir", metavar="DIR", help="pid/token/endpoint directory (default: per user)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int,
                   help="port (default: hardware.port, 8731, or the next free one when taken)")
    p.add_argument("--namespace", metavar="NS",
                   help="the namespace whose shared tiers and pools the daemon owns (default: cache.namespace)")
    p.add_argument("--enable-all", action="store_true",
                   help="turn on every optional part: prefetching, L3 compression, auto-fix, prediction, NUMA")
    p.add_argument("--auto-fix", action="store_true", help="let the eliminator act, not only recommend")
    p.add_argument("--l1-size", type=int, metavar="BYTES", help="L1 cache bytes per process")
    p.add_argument("--l2-size", type=int, metavar="BYTES", help="shared L2 cache bytes (within cache_size_mb)")
    p.add_argument("--enable-ml", action="store_true", help="learned prefetching on")
    p.add_argument("--prefetch-depth", type=int, help="keys prefetched per access")
    p.add_argument("--pool-size", type=int, metavar="MB", help="size of each default pool the daemon creates")
    p.add_argument("--enable-compression", action="store_true", help="compress the L3 tier (lz4)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sutazai-hwopt-daemon", description=__doc__)
    add_daemon_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.exception("daemon failed")
        print(f"sutazai-hwopt daemon: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
