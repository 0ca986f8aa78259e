"""Tests mirror the modules they test, and vice versa (mitmproxy's filename_matching.py).

`proxy/x.py` is tested by `tests/proxy/test_x.py`, `proxy/record/x.py` by
`tests/proxy/record/test_x.py`. `proxy/testing/` is exempt: it is test support (the fake upstream
is exercised by tests/e2e). End-to-end tests live in tests/e2e and mirror nothing.
"""

from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("proxy", "analytics")
EXEMPT_DIRS = frozenset({"testing"})
EXEMPT_FILES = frozenset({"__init__.py", "__main__.py"})


def _modules() -> set[Path]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if path.name in EXEMPT_FILES or EXEMPT_DIRS & set(relative.parts):
                continue
            found.add(relative)
    return found


def _tests() -> set[Path]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / "tests" / package).rglob("test_*.py"):
            found.add(path.relative_to(ROOT / "tests"))
    return found


def test_every_module_has_its_mirror_test():
    expected = {m.parent / f"test_{m.name}" for m in _modules()}
    missing = sorted(str(p) for p in expected - _tests())
    assert not missing, f"modules without tests/{{path}}: {missing}"


def test_every_mirror_test_has_its_module():
    modules = {m.parent / f"test_{m.name}" for m in _modules()}
    orphans = sorted(str(p) for p in _tests() - modules)
    assert not orphans, f"tests that mirror no module: {orphans}"
