"""Quickstart: the library at work on this host (run: python examples/quickstart.py)."""

from __future__ import annotations

import json

import sutazai_hwopt
from sutazai_hwopt.config import load_config


def main() -> None:
    from sutazai_hwopt._native import buildinfo

    print(f"sutazai_hwopt {sutazai_hwopt.__version__} (compiled cores: {buildinfo.is_compiled()})")
    config = load_config(mode="balanced")
    print("balanced mode, hardware section:")
    print(json.dumps(config.hardware.to_dict(), indent=2))


if __name__ == "__main__":
    main()
