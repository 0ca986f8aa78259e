"""The README's Guarantees table names the test behind every row: each name must be a real test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def guarantees_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Guarantees, and the tests that back them")
    return readme[start:readme.index("\n#### Load and soak", start)]


def named_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name.startswith("test_")}


def test_every_test_the_guarantees_table_names_exists() -> None:
    rows = [line for line in guarantees_section().splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 30
    named = 0
    for row in rows:
        backed_by = row.rstrip(" |").rsplit(" | ", 1)[1]
        current: Path | None = None
        for ref in re.findall(r"`([^`]+)`", backed_by):
            file, _, name = ref.rpartition("::")
            if file:
                current = ROOT / file if file.startswith("tests/") else ROOT / "tests" / "faults" / file
            assert current is not None and current.exists(), (row[:60], ref)
            assert name in named_tests(current), f"{ref} is not a test in {current}"
            named += 1
        assert backed_by.count("`") >= 2, f"a row backed by no test: {row[:80]}"
    assert named >= len(rows)
