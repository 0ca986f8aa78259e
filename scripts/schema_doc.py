"""Rewrite docs/schema.md's schema section from a freshly migrated database (`make schema-doc`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from proxy.record.migrations import schema_markdown

SCHEMA_DOC = Path(__file__).parents[1] / "docs" / "schema.md"
SECTION = re.compile(r"(<!-- schema:start -->\n).*?(<!-- schema:end -->)", re.S)


def schema_section(text: str) -> str:
    match = SECTION.search(text)
    if match is None:
        raise SystemExit("docs/schema.md has no <!-- schema:start --> ... <!-- schema:end --> section")
    return text[match.end(1):match.start(2)]


def main() -> int:
    text = SCHEMA_DOC.read_text()
    schema_section(text)
    SCHEMA_DOC.write_text(SECTION.sub(lambda m: m.group(1) + schema_markdown() + m.group(2), text))
    print(f"updated the schema section of {SCHEMA_DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
