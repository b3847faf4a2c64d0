#!/usr/bin/env bash
# The demo: embedded PostgreSQL, migrate, a worker, jobs enqueued, results and status shown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py
