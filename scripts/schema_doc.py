"""Rewrite the README's schema section from a freshly migrated database (`make schema-doc`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from proxy.record.migrations import schema_markdown

README = Path(__file__).parents[1] / "README.md"
SECTION = re.compile(r"(<!-- schema:start -->\n).*?(<!-- schema:end -->)", re.S)


def readme_section(text: str) -> str:
    match = SECTION.search(text)
    if match is None:
        raise SystemExit("README.md has no <!-- schema:start --> ... <!-- schema:end --> section")
    return text[match.end(1):match.start(2)]


def main() -> int:
    text = README.read_text()
    readme_section(text)
    README.write_text(SECTION.sub(lambda m: m.group(1) + schema_markdown() + m.group(2), text))
    print(f"updated the schema section of {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
