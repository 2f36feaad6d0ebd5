"""CLI subcommands of the host service: deploy, status, stop, clean, profile, export-stats, dashboard.

Exit codes: 0 success; 1 a library error; 3 nothing is running (``status``, ``stop``); 4 already running
(``deploy``); 5 segments not removed because live processes map them (``clean``, ``stop --purge``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StateError
from .daemon import add_daemon_arguments, journal_dir
from .runtime import RuntimeDir

__all__ = ["ALREADY_RUNNING", "COMMANDS", "NOT_RUNNING", "SEGMENTS_BUSY"]

NOT_RUNNING = 3
ALREADY_RUNNING = 4
SEGMENTS_BUSY = 5

_Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _rollback_stale(runtime: RuntimeDir) -> int:
    """Roll back what a killed daemon applied (its journal is on disk) and remove its pid file."""
    from ..resources import ResourcePoolCoordinator

    coordinator = ResourcePoolCoordinator(state_dir=journal_dir(runtime))
    try:
        restored = coordinator.rollback()
    finally:
        coordinator.close()
    runtime.clear()
    return len(restored)


# -- deploy ---------------------------------------------------------------------------------------------------
def _deploy_args(p: argparse.ArgumentParser) -> None:
    add_daemon_arguments(p)
    p.add_argument("--foreground", action="store_true", help="run in this process (for systemd/containers)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the daemon to listen")


_FORWARD = ("mode", "config", "log_dir", "host", "port", "namespace", "l1_size", "l2_size", "prefetch_depth",
            "pool_size")
_FLAGS = ("enable_all", "auto_fix", "enable_ml", "enable_compression")


def _deploy(args: argparse.Namespace) -> int:
    runtime = RuntimeDir(args.runtime_dir)
    running = runtime.running()
    if running is not None:
        url = (runtime.read_endpoint() or {}).get("url", "?")
        print(f"host service already running (pid {running.pid}) at {url}; "
              "use `sutazai-hwopt stop` first", file=sys.stderr)
        return ALREADY_RUNNING
    stale = runtime.stale()
    if stale is not None:
        n = _rollback_stale(runtime)
        print(f"found the pid file of a dead host service (pid {stale.pid}); rolled back {n} settings it applied")
    runtime.ensure()
    runtime.new_token()
    forwarded = ["--runtime-dir", str(runtime.path)]
    for name in _FORWARD:
        value = getattr(args, name)
        if value is not None:
            forwarded += [f"--{name.replace('_', '-')}", str(value)]
    forwarded += [f"--{name.replace('_', '-')}" for name in _FLAGS if getattr(args, name)]
    if args.foreground:
        from .daemon import main as daemon_main

        return daemon_main(forwarded)
    fd = os.open(runtime.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = subprocess.Popen([sys.executable, "-m", "sutazai_hwopt.host.daemon", *forwarded],
                                 stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                 close_fds=True)
    finally:
        os.close(fd)
    deadline = time.monotonic() + args.wait
    endpoint: dict[str, Any] = {}
    while time.monotonic() < deadline:
        endpoint = runtime.read_endpoint() or {}
        if endpoint.get("pid") == child.pid:
            break
        if child.poll() is not None:
            print(f"the host service exited during start-up (code {child.returncode}); log {runtime.log_file}:",
                  file=sys.stderr)
            print(_tail(runtime.log_file), file=sys.stderr)
            return 1
        time.sleep(0.05)
    else:
        print(f"the host service did not start listening within {args.wait:.0f} s; log: {runtime.log_file}",
              file=sys.stderr)
        return 1
    print(f"host service running (pid {child.pid}, mode {args.mode or 'from config, else balanced'})")
    print(f"dashboard: {endpoint['url']}")
    api = str(endpoint["url"]).rstrip("/")
    print(f"api token: {runtime.token_file} (readable by you only; every mutating call needs it), e.g.:")
    print(f"  curl -s -H \"Authorization: Bearer $(cat {runtime.token_file})\" {api}/api/status")
    print(f"logs:      {args.log_dir or runtime.path / 'logs'}")
    return 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- status ---------------------------------------------------------------------------------------------------
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the current state as JSON")
    p.add_argument("--history", action="store_true", help="with --json: include the sampled history")


def _status(args: argparse.Namespace) -> int:
    from .client import HostClient

    runtime = RuntimeDir(args.runtime_dir)
    if runtime.running() is None:
        stale = runtime.stale()
        extra = f" (stale pid file of dead pid {stale.pid}; `stop` or `deploy` cleans it up)" if stale else ""
        print(f"host service: not running{extra}")
        _print_shm_usage()
        return NOT_RUNNING
    client = HostClient(runtime.path)
    data = client.get("/api/dashboard")
    if args.json:
        if not args.history:   # the current state only: the latest sample instead of the whole history
            history = data.pop("history", None) or []
            data["latest"] = history[-1] if history else None
        data["shm"] = _shm_usage_json()
        print(json.dumps(data, indent=2))
        return 0
    _print_status(data, client.url)
    _print_shm_usage()
    return 0


def _shm_usage_json() -> dict[str, Any]:
    from .segments import usage

    return {ns: {"segments": len(u.segments), "resident_bytes": u.resident_bytes,
                 "apparent_bytes": u.apparent_bytes} for ns, u in usage().items()}


def _print_shm_usage() -> None:
    """One line per namespace of this user holding /dev/shm segments, with how to remove them."""
    from .segments import format_bytes, usage

    namespaces = usage()
    if not namespaces:
        print("/dev/shm: no segments of this user")
        return
    for ns, u in namespaces.items():   # namespaces are up to 64 characters: two lines keep within 80 columns
        print(f"/dev/shm: {ns}")
        print(f"  holds {format_bytes(u.resident_bytes)} ({format_bytes(u.apparent_bytes)} apparent) "
              f"in {len(u.segments)} segments")
    print("  remove a namespace's segments: sutazai-hwopt clean --namespace NS")


def _print_figures(console: Any, title: str, columns: tuple[str, ...], items: dict[str, dict[str, Any]],
                   cells: Callable[[dict[str, Any]], tuple[str, ...]]) -> None:
    """One table of per-level or per-pool figures (nothing when empty); an entry with ``error`` says so."""
    if not items:
        return
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for name, f in items.items():
        if "error" in f:
            table.add_row(name, f"error: {f['error']}", *([""] * (len(columns) - 2)))
        else:
            table.add_row(name, *cells(f))
    console.print(table)


def _thread_pools(agent: dict[str, Any]) -> str:
    """The agent's reported math-library pools, e.g. ``blas 2`` (``-`` until it reports)."""
    pools = (agent.get("report") or {}).get("thread_pools")
    if not pools:
        return "-"
    return ", ".join(f"{p.get('user_api')} {p.get('num_threads')}" for p in pools)


def _print_status(data: dict[str, Any], url: str) -> None:
    """Readable tables (each fits 80 columns) of what the host service reports."""
    from rich.console import Console
    from rich.table import Table

    from .segments import format_bytes

    console = Console()
    st = data["status"]
    console.print(f"[bold]host service[/] running: pid {st['pid']}, mode {st['mode']}, up {st['uptime_s']:.0f} s")
    console.print(f"dashboard and API: {url}")
    services = Table(title="services")
    services.add_column("service")
    services.add_column("state")
    for name, state in st["services"].items():
        services.add_row(name, state)
    console.print(services)
    agents = Table(title=f"agents ({len(data['agents'])})")
    for col in ("agent", "pid", "priority", "cpus", "CPU %", "RSS MiB", "threads"):
        agents.add_column(col, overflow="fold")
    load = data.get("load") or {}
    for a in data["agents"]:
        p = load.get(a["agent_id"], {})
        cpus = a.get("cpus") or a.get("assigned_cpus") or []
        cpu = p.get("cpu_percent")
        rss = p.get("rss_bytes")
        priority = (a.get("requirements") or {}).get("priority")
        agents.add_row(a["agent_id"], str(a.get("pid")), str(priority), ",".join(map(str, cpus)),
                       f"{cpu:.1f}" if isinstance(cpu, (int, float)) else "-",
                       f"{rss / 2**20:.1f}" if isinstance(rss, (int, float)) else "-", _thread_pools(a))
    console.print(agents)
    _print_prefetch(console, data["agents"])
    _print_namespace(console, data.get("namespace") or {})
    _print_figures(console, "shared cache", ("level", "hit ratio", "entries", "used / budget", "evictions"),
                   (data.get("cache") or {}).get("levels") or {},
                   lambda f: (f"{f['hit_ratio']:.2f}", str(f["entries"]),
                              f"{format_bytes(f['bytes'])} / {format_bytes(f['budget'])}", str(f["evictions"])))
    _print_figures(console, "memory pools", ("pool", "used / capacity", "blocks", "dedup", "fragmentation"),
                   data.get("pools") or {},
                   lambda f: (f"{format_bytes(f['used'])} / {format_bytes(f['capacity'])}", str(f["blocks"]),
                              f"{f['dedup_ratio']:.1f}x", f"{f['fragmentation']:.0%}"))
    if data.get("bottlenecks"):
        console.print(f"[bold]bottlenecks[/] {', '.join(b['type'] for b in data['bottlenecks'].values())}")


def _print_prefetch(console: Any, agents: list[dict[str, Any]]) -> None:
    """Each agent's prefetch decision per cache, as the agent reported it (only when one did)."""
    from rich.markup import escape
    from rich.table import Table

    rows = [(a["agent_id"], r) for a in agents for r in ((a.get("report") or {}).get("prefetch") or [])]
    if not rows:
        return
    table = Table(title="prefetching (reported by the agents)")
    for col in ("agent", "cache"):
        table.add_column(col, overflow="fold")
    for col in ("state", "prec", "cov", "why"):   # precision, coverage: --json and the dashboard say more
        table.add_column(col, no_wrap=True)
    for agent_id, r in rows:
        table.add_row(escape(agent_id), escape(str(r.get("cache"))), str(r.get("state")),
                      f"{r.get('precision', 0):.0%}", f"{r.get('coverage', 0):.0%}", str(r.get("reason_code")))
    console.print(table)


def _print_namespace(console: Any, owned: dict[str, Any]) -> None:
    """What the daemon created for its namespace at deploy: the shared tiers and the default pools."""
    from .segments import format_bytes

    if not owned.get("tiers") and not owned.get("pools"):
        return
    tiers = ", ".join(f"{level} {format_bytes(t['size'])}" for level, t in owned["tiers"].items()) or "none"
    pools = ", ".join(f"{p} {format_bytes(f['capacity'])}" if "capacity" in f else f"{p} (error)"
                      for p, f in owned["pools"].items()) or "none"
    console.print(f"namespace: [bold]{owned.get('namespace')}[/]")   # names are up to 64 characters
    console.print("  owned by the host service; `stop --purge` removes it")
    console.print(f"  tiers: {tiers} (budget {format_bytes(owned.get('cache_budget', 0))})")
    console.print(f"  pools: {pools}")


# -- stop -----------------------------------------------------------------------------------------------------
def _stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-dir", metavar="DIR")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    p.add_argument("--purge", action="store_true",
                   help="also remove the namespace's shared-memory segments (see `clean`)")
    _namespace_args(p)


def _stop(args: argparse.Namespace) -> int:
    if args.purge and args.namespace is None:   # purge the namespace the running daemon owns
        args.namespace = _owned_namespace(RuntimeDir(args.runtime_dir))
    code = _stop_service(args)
    if args.purge:
        purged = _run_clean(args)
        return purged if purged else (0 if code == NOT_RUNNING else code)
    return code


def _owned_namespace(runtime: RuntimeDir) -> str | None:
    """The namespace the running daemon owns (``GET /api/config``), or None when none runs or it cannot say."""
    if runtime.running() is None:
        return None
    from ..errors import HwoptError
    from .client import HostClient

    try:
        namespace = HostClient(runtime.path).get("/api/config").get("namespace")
    except (HwoptError, AttributeError):
        return None
    return namespace if isinstance(namespace, str) else None


def _stop_service(args: argparse.Namespace) -> int:
    runtime = RuntimeDir(args.runtime_dir)
    record = runtime.running()
    if record is None:
        stale = runtime.stale()
        if stale is None:
            print("host service: not running")
            return NOT_RUNNING
        n = _rollback_stale(runtime)
        print(f"host service (pid {stale.pid}) had died; rolled back {n} settings it applied and removed its pid file")
        return 0
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    forced = False
    if record.alive():
        os.kill(record.pid, signal.SIGKILL)
        forced = True
        while record.alive():
            time.sleep(0.02)
    n = _rollback_stale(runtime)  # after a graceful stop this finds nothing left to restore
    how = "killed after the timeout" if forced else "stopped"
    print(f"host service (pid {record.pid}) {how}; every setting it applied is rolled back"
          + (f" ({n} restored from its journal)" if n else ""))
    return 0


# -- clean ----------------------------------------------------------------------------------------------------
def _namespace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", metavar="NS",
                   help="the namespace whose segments to remove (default: the configured one, `sutazai`)")
    p.add_argument("--force", action="store_true", help="remove them even while live processes map them")


def _clean_args(p: argparse.ArgumentParser) -> None:
    _namespace_args(p)


def _run_clean(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .segments import format_bytes, process_name, purge, usage

    namespace = args.namespace or load_config().cache.namespace
    before = usage().get(namespace)
    removed, busy = purge(namespace, force=args.force)
    if busy and not removed:
        print(f"namespace {namespace}: not removed, live processes map its segments "
              "(stop them first, or use --force):", file=sys.stderr)
        for pid, names in sorted(busy.items()):
            print(f"  pid {pid} ({process_name(pid)}): {', '.join(sorted(names))}", file=sys.stderr)
        return SEGMENTS_BUSY
    if not removed:
        print(f"namespace {namespace}: no segments in /dev/shm")
        return 0
    freed = format_bytes(before.resident_bytes) if before else "?"
    note = f"; {len(busy)} live processes still map them (memory freed when they exit)" if busy else ""
    print(f"namespace {namespace}: removed {len(removed)} segments ({freed} in use){note}")
    return 0


# -- profile / export-stats / dashboard -------------------------------------------------------------------
def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=300.0, help="seconds")
    p.add_argument("--interval", type=float, default=1.0, help="sampling period in seconds")
    p.add_argument("--export-results", metavar="FILE", help="write the JSON report here")
    p.add_argument("--runtime-dir", metavar="DIR")


def _profile(args: argparse.Namespace) -> int:
    import asyncio

    from rich.progress import Progress

    from ..profiler import PerformanceProfiler

    if not args.duration > 0:
        raise StateError(f"--duration must be > 0, got {args.duration}")
    agents = _agents_of_running(RuntimeDir(args.runtime_dir))
    profiler = PerformanceProfiler(agents=agents, interval_s=args.interval)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"profiling {len(agents)} agents", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = asyncio.run(profiler.run_comprehensive_analysis(duration=args.duration, progress=tick))
    profiler.close()
    found = report.get("bottlenecks", [])
    print(f"profiled {len(agents)} agents for {args.duration:g} s; {len(found)} bottleneck(s)")
    for b in found:
        print(f"  {b.get('type')} ({b.get('severity')}): {b.get('message', '')}")
    if args.export_results:
        Path(args.export_results).write_text(json.dumps(report, indent=2, default=str))
        print(f"report written to {args.export_results}")
    return 0


def _agents_of_running(runtime: RuntimeDir) -> dict[str, int]:
    if runtime.running() is None:
        return {}
    from .client import HostClient

    return {a["agent_id"]: a["pid"] for a in HostClient(runtime.path).get("/api/agents")}


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="output JSON file, e.g. system_metrics.json")
    p.add_argument("--runtime-dir", metavar="DIR")


def _export(args: argparse.Namespace) -> int:
    runtime = RuntimeDir(args.runtime_dir)
    if runtime.running() is not None:
        from .client import HostClient

        client = HostClient(runtime.path)
        data = {"dashboard": client.get("/api/dashboard"), "metrics": client.get("/api/metrics")}
    else:
        from ..profiler import PerformanceProfiler

        profiler = PerformanceProfiler(agents={})
        profiler.sample()
        time.sleep(0.5)
        data = {"metrics": {"system": profiler.sample().system_metrics}, "host": "not running"}
        profiler.close()
    Path(args.path).write_text(json.dumps(data, indent=2, default=str))
    print(f"stats written to {args.path}")
    return 0


def _dash_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", metavar="FILE", required=True, help="e.g. optimization-dashboard.html")
    p.add_argument("--runtime-dir", metavar="DIR")


def _dash(args: argparse.Namespace) -> int:
    from .client import HostClient
    from .dashboard import render_dashboard

    runtime = RuntimeDir(args.runtime_dir)
    if runtime.running() is None:
        print("host service: not running")
        return NOT_RUNNING
    snapshot = HostClient(runtime.path).get("/api/dashboard")
    Path(args.export).write_text(render_dashboard(snapshot, inline_js=True))
    print(f"dashboard written to {args.export}")
    return 0


#: The subcommands of this module, in the order ``--help`` lists them: (name, help, add_arguments, run), where
#: ``run(args)`` returns the exit code. :func:`sutazai_hwopt.cli.build_parser` adds them (nothing registers itself
#: on import).
COMMANDS: tuple[_Command, ...] = (
    ("deploy", "start the host service daemon, establish the baseline and apply the mode",
     _deploy_args, _deploy),
    ("status", "show whether the host service runs, its agents, placement, cache and pool figures",
     _status_args, _status),
    ("stop", "stop the host service gracefully and roll back every setting it applied",
     _stop_args, _stop),
    ("clean", "remove a namespace's shared-memory segments from /dev/shm (refused while processes map them)",
     _clean_args, _run_clean),
    ("profile", "profile the host and the registered agents for a while; optionally export a JSON report",
     _profile_args, _profile),
    ("export-stats", "write the host service's (or, if none runs, this host's) figures to a JSON file",
     _export_args, _export),
    ("dashboard", "export the dashboard as one self-contained HTML file (live data snapshot)",
     _dash_args, _dash),
)
