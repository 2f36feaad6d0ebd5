#!/usr/bin/env bash
# Thin wrapper kept for the reference deployment's script name: `sutazai-hwopt stop` with the same arguments.
exec "${PYTHON:-python3}" -m sutazai_hwopt stop "$@"
