"""Load the named statements of queries.sql once and bind the schema name into them."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_FRAGMENT = re.compile(r"\{(_\w+)\}")
# Comment lines and indentation are for readers of queries.sql; statements are sent without
# them. psycopg parses a statement longer than 4 KiB (MAX_STATEMENT_BYTES) again at every
# execution: as written, the hot path (`complete_and_claim`) is 7 KiB.
_COMMENT_LINE = re.compile(r"^[ \t]*--.*\n?", re.MULTILINE)
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)
MAX_STATEMENT_BYTES = 4096


@functools.cache
def _raw_queries() -> dict[str, str]:
    text = (Path(__file__).parent / "queries.sql").read_text()
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    raw = {name: _INDENT.sub("", _COMMENT_LINE.sub("", body)).strip()
           for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    # `{_name}` splices the fragment `_name` in (fragments may splice others), so a part
    # shared by several queries (the claim's CTEs, the outcome UPDATE) is written once.

    def spliced(body: str) -> str:
        return _FRAGMENT.sub(lambda m: spliced(raw[m.group(1)]), body)

    return {name: spliced(body) for name, body in raw.items()}


class Queries:
    """Every runtime statement, as plain strings with the schema bound (`q.claim`, ...)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        ident = sql.Identifier(schema).as_string(None)
        self._sql = {name: body.replace("{schema}", ident) for name, body in _raw_queries().items()}
        self.jobs_channel = f"{schema}_jobs"
        self.done_channel = f"{schema}_done"
        self.results_channel = f"{schema}_results"
        self.control_channel = f"{schema}_control"
        self.events_channel = f"{schema}_events"

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queries.sql") from None


@functools.cache
def queries_for(schema: str) -> Queries:
    return Queries(schema)
