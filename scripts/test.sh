#!/usr/bin/env bash
# Run the test suite against a real PostgreSQL: $PGQ_TEST_DSN if set, else the embedded
# server (in .pgq/testdata). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${PGQ_TEST_PROCESSES:-3}" "$@"
