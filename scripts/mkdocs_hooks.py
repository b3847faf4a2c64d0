"""mkdocs hooks for the docs site (mkdocs.yml: `hooks`).

GitHub needs a pipe inside a code span in a table cell escaped (`a \\| b`), and shows it as
`a | b`; Python-Markdown keeps the backslash but needs no escape there. So on table rows the
escape is dropped inside code spans, and both render the same."""

from __future__ import annotations

import re
from typing import Any

_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _unescape_pipes(span: re.Match[str]) -> str:
    return span.group(0).replace("\\|", "|")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return "\n".join(_CODE_SPAN.sub(_unescape_pipes, line) if line.lstrip().startswith("|")
                     else line for line in markdown.split("\n"))
