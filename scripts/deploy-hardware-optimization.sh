#!/usr/bin/env bash
# Thin wrapper kept for the reference deployment's script name: `sutazai-hwopt deploy` with the same arguments.
exec "${PYTHON:-python3}" -m sutazai_hwopt deploy "$@"
