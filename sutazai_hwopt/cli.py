"""The ``sutazai-hwopt`` command line.

Subcommands are small functions registered in :data:`COMMANDS`; each part of the library adds its own
(``deploy``/``status``/``stop``/``profile`` come with the coordinator). Exit codes: 0 success, 1 a library
error (message on stderr), 2 bad usage, 3 "not running" for ``status``/``stop``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from ._version import __version__
from .errors import HwoptError

__all__ = ["COMMANDS", "build_parser", "main"]

#: name -> (help, add_arguments, run). ``run(args)`` returns the exit code.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], None]],
                                              Callable[[argparse.ArgumentParser], None]]:
    """Register ``name``: decorate its argument builder, then set ``run`` via :func:`runner`."""

    def deco(add_args: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
        COMMANDS[name] = (help, add_args, _not_implemented)
        return add_args

    return deco


def runner(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        help_, add_args, _ = COMMANDS[name]
        COMMANDS[name] = (help_, add_args, run)
        return run

    return deco


def _not_implemented(args: argparse.Namespace) -> int:  # pragma: no cover - every command sets a runner
    raise HwoptError(f"command {args.command!r} has no implementation")


@command("info", "show how the library was built and what this host offers")
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


@runner("info")
def _info(args: argparse.Namespace) -> int:
    import os

    from ._native import buildinfo

    facts = {
        "version": __version__,
        "compiled": buildinfo.is_compiled(),
        "debug_build": buildinfo.DEBUG_BUILD,
        "cython": buildinfo.CYTHON_VERSION,
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "psi": os.path.exists("/proc/pressure/cpu"),
    }
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for k, v in facts.items():
            print(f"{k:14} {v}")
    return 0


@command("config", "print the resolved configuration (defaults, mode preset, files)")
def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="DIR", help="configuration directory")
    p.add_argument("--mode", choices=("conservative", "balanced", "aggressive"))


@runner("config")
def _config(args: argparse.Namespace) -> int:
    from .config import load_config

    print(json.dumps(load_config(args.config, mode=args.mode).to_dict(), indent=2))
    return 0


def _load_plugins() -> None:
    """Import the modules that register further subcommands (kept out of ``import sutazai_hwopt``)."""
    import importlib

    for module in ("sutazai_hwopt.coordinator.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(str(exc.name)):
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="sutazai-hwopt", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except HwoptError as exc:
        print(f"sutazai-hwopt {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
