"""The ``sutazai-hwopt`` command line.

Subcommands are small functions; ``info`` and ``config`` are here, and each module of :data:`COMMAND_MODULES` adds
its own through an explicit ``COMMANDS`` table that :func:`build_parser` reads (``deploy``/``status``/``stop``/
``profile`` come with the host service). Exit codes: 0 success, 1 a library error (message on stderr), 2 bad
usage, 3 "not running" for ``status``/``stop``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import __version__
from .errors import HwoptError

__all__ = ["COMMAND_MODULES", "Command", "build_parser", "main"]

#: One subcommand: (name, help, add_arguments(parser), run(args) -> exit code).
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

#: Modules that add subcommands, each through its ``COMMANDS`` table (of :data:`Command`). Imported only when the
#: command line is built, so ``import sutazai_hwopt`` stays light; one whose optional dependencies are missing is
#: skipped.
COMMAND_MODULES: tuple[str, ...] = ("sutazai_hwopt.host.commands",)


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


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


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="DIR", help="configuration directory")
    p.add_argument("--mode", choices=("conservative", "balanced", "aggressive"))


def _config(args: argparse.Namespace) -> int:
    from .config import load_config

    print(json.dumps(load_config(args.config, mode=args.mode).to_dict(), indent=2))
    return 0


#: The commands that need no optional dependency; same shape as each command module's ``COMMANDS``.
_BUILTIN: tuple[Command, ...] = (
    ("info", "show how the library was built and what this host offers", _info_args, _info),
    ("config", "print the resolved configuration (defaults, mode preset, files)", _config_args, _config),
)


def _command_modules() -> list[Any]:
    """The modules of :data:`COMMAND_MODULES` that import (their optional dependencies present)."""
    import importlib

    out = []
    for module in COMMAND_MODULES:
        try:
            out.append(importlib.import_module(module))
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(str(exc.name)):
                raise
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``sutazai-hwopt`` parser: the built-in commands, then each of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(prog="sutazai-hwopt", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tables: list[tuple[Command, ...]] = [_BUILTIN, *(m.COMMANDS for m in _command_modules())]
    for name, help_, add_args, run in (c for table in tables for c in table):
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except HwoptError as exc:
        print(f"sutazai-hwopt {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
