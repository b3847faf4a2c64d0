#!/usr/bin/env bash
# Build the documentation site strictly into site/ (git-ignored): a page missing from the nav
# in mkdocs.yml, a link to a missing page or heading, or a broken API reference fails it.
# Preview while writing: .venv/bin/mkdocs serve
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c "import mkdocs, material, mkdocs_click, mkdocstrings_handlers.python" \
        2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[docs]'
fi
export NO_MKDOCS_2_WARNING=1   # Material's banner about its successor: not ours to act on
.venv/bin/mkdocs build --strict "$@"
echo "docs built into site/ ($(find site -name '*.html' | wc -l) pages)"
