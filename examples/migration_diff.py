"""Print the unified diff from celery_app/ to pgq_app/: what porting the shop changed.

    python examples/migration_diff.py

pgq_app/README.md and docs/migrating-from-celery.md show this output; a test keeps them
current."""

from __future__ import annotations

import difflib
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["app.py", "tasks.py", "checkout.py", "services.py", "Procfile"]


def migration_diff() -> str:
    chunks = []
    for name in FILES:
        before = (HERE / "celery_app" / name).read_text().splitlines(keepends=True)
        after = (HERE / "pgq_app" / name).read_text().splitlines(keepends=True)
        chunks.extend(difflib.unified_diff(before, after, f"celery_app/{name}",
                                           f"pgq_app/{name}"))
    return "".join(chunks)


if __name__ == "__main__":
    print(migration_diff(), end="")
