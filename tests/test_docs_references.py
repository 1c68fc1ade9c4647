"""Every "§" reference a user or a reader of the code can meet resolves to a heading of docs/methods.md, and no
file cites documents the repository does not contain (METHODS.md, DESIGN.md, STYLE.md, DATA.md).

* Package source (estimators/, taskgauge/, workers/, app/ — Python, templates, JS, CSS, C): every "§N" or
  "§N.M" is a section of docs/methods.md, unless it cites another document named right before it (an RFC, Li et
  al.'s paper, a reference script). A chain "docs/methods.md §0, §1.1, §7" is checked item by item. A quoted
  paragraph name after a number ("§1.1 'Ties'") must occur in that section.
* Everywhere in the repository (also tests/, bench/, examples/, README.md, docs/): every explicit
  "docs/methods.md §X" resolves, and nothing cites METHODS/DESIGN/STYLE/DATA files.

``tools/rewrite_refs.py`` rewrites the old citations mechanically (docs/methods.md keeps METHODS.md's numbers).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS_DOC = ROOT / "docs" / "methods.md"

PACKAGES = ("estimators", "taskgauge", "workers", "app")
SOURCE_SUFFIXES = {".py", ".pyi", ".js", ".html", ".css", ".c", ".h", ".txt", ".md", ".json"}
TEXT_SUFFIXES = SOURCE_SUFFIXES | {".toml", ".cfg", ".ini", ".yml", ".yaml", ".sh", ".rst"}
TEXT_NAMES = {"Dockerfile", "Makefile", "run"}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "screenshots", ".taskgauge"}
SKIP_DIRS |= {".pytest_cache", ".mypy_cache", ".ruff_cache"}
# these two spell the old names on purpose (the rewrite rules and this test)
SKIP_FILES = {"tools/rewrite_refs.py", "tests/test_docs_references.py"}

SEC = r"\d+(?:\.\d+)*"
# one citation chain: "§1.1", "§4.2–4.3", "§0, §1.1; §7", optionally with a quoted paragraph name after an item
ITEM = rf"§(?P<num>{SEC})(?:[–-](?P<upto>{SEC}))?(?:,? ?(?P<q>['\"“‘])(?P<name>[^'\"”’\n]{{1,60}})['\"”’])?"
ITEM_RE = re.compile(ITEM)
CHAIN_RE = re.compile(
    rf"§{SEC}(?:[–-]{SEC})?(?:,? ?['\"“‘][^'\"”’\n]{{1,60}}['\"”’])?"
    rf"(?:(?:, |; | and |, and )§{SEC}(?:[–-]{SEC})?(?:,? ?['\"“‘][^'\"”’\n]{{1,60}}['\"”’])?)*"
)
# a chain that cites another document: the source is named right before it
EXTERNAL_BEFORE = re.compile(
    r"\b(?:RFC ?\d+|Li(?:'s| et al\.?)?(?: \d{4})?|[Pp]aper(?:'s)?|[\w./-]+\.(?:py|ipynb)|Aghajanyan(?: et al\.?)?"
    r"|Boopathy(?: et al\.?)?|Konz(?: & Mazurowski)?|Sect(?:ion)?\.?)[,:]? ?\(?$"
)
OLD_DOC_RE = re.compile(r"\b(?:METHODS|DESIGN|STYLE|DATA)\.md\b|\b(?:METHODS|DESIGN|STYLE)(?= §)")
EXPLICIT_RE = re.compile(rf"docs/methods\.md (?P<chain>{CHAIN_RE.pattern})")


@lru_cache(maxsize=1)
def sections() -> dict[str, str]:
    """Section number -> its text (heading to the next numbered heading of the same or a higher level)."""
    heading = re.compile(rf"^(?P<hashes>#{{1,6}})\s+(?:§\s*)?(?P<num>{SEC})\.?\s")
    lines = METHODS_DOC.read_text(encoding="utf-8").splitlines()
    marks = []
    for i, line in enumerate(lines):
        m = heading.match(line)
        if m:
            marks.append((i, len(m.group("hashes")), m.group("num")))
    out = {}
    for j, (i, level, num) in enumerate(marks):
        end = next((k for k, lv, _ in marks[j + 1 :] if lv <= level), len(lines))
        out[num] = "\n".join(lines[i:end])
    return out


def text_files(dirs: tuple[str, ...] | None, suffixes: set[str]):
    bases = [ROOT / d for d in dirs] if dirs else [ROOT]
    for base in bases:
        if not base.exists():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(ROOT)
            if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts[:-1]):
                continue
            if not path.is_file() or rel.as_posix() in SKIP_FILES:
                continue
            if path.suffix in suffixes or path.name in TEXT_NAMES:
                try:
                    yield rel.as_posix(), path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue


def _expand(num: str, upto: str | None) -> list[str]:
    """'4.2'–'4.3' -> ['4.2', '4.3']; a single number -> [num]."""
    if not upto:
        return [num]
    head, last = num.rsplit(".", 1) if "." in num else ("", num)
    if "." in upto:
        up_head, up_last = upto.rsplit(".", 1)
        if up_head != head:
            return [num, upto]
    else:
        up_last = upto
    return [f"{head}.{i}" if head else str(i) for i in range(int(last), int(up_last) + 1)]


def check_chain(chain: str, where: str) -> list[str]:
    problems = []
    secs = sections()
    for item in ITEM_RE.finditer(chain):
        for num in _expand(item.group("num"), item.group("upto")):
            if num not in secs:
                problems.append(f"{where}: §{num} is not a heading of docs/methods.md")
                continue
            name = item.group("name")
            if name and name.lower() not in secs[num].lower():
                problems.append(f"{where}: §{num} has no paragraph {name!r}")
    return problems


def test_methods_doc_has_the_numbered_sections():
    expected = "0 1 1.1 1.2 1.3 1.4 1.5 2 3 3.1 3.2 4 4.1 4.2 4.3 4.4 4.5 5 6 7".split()
    assert list(sections()) == expected


def test_package_section_references_resolve():
    problems: list[str] = []
    n = 0
    for rel, text in text_files(PACKAGES, SOURCE_SUFFIXES):
        for lineno, line in enumerate(text.splitlines(), 1):
            for chain in CHAIN_RE.finditer(line):
                if EXTERNAL_BEFORE.search(line[: chain.start()].rstrip(" (")):
                    continue
                n += 1
                problems += check_chain(chain.group(0), f"{rel}:{lineno}")
    assert n > 0, "no § reference found at all: is the scan looking at the right folders?"
    assert not problems, "\n".join(problems)


def test_explicit_methods_references_resolve_everywhere():
    problems: list[str] = []
    for rel, text in text_files(None, TEXT_SUFFIXES):
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in EXPLICIT_RE.finditer(line):
                problems += check_chain(m.group("chain"), f"{rel}:{lineno}")
    assert not problems, "\n".join(problems)


def test_no_citation_of_documents_the_repository_lacks():
    found = []
    for rel, text in text_files(None, TEXT_SUFFIXES):
        for lineno, line in enumerate(text.splitlines(), 1):
            if OLD_DOC_RE.search(line):
                found.append(f"{rel}:{lineno}: {line.strip()[:140]}")
    assert not found, (
        f"{len(found)} lines cite METHODS.md / DESIGN.md / STYLE.md / DATA.md, which the repository does not "
        "contain; run `python tools/rewrite_refs.py`:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text,ok",
    [
        ("see docs/methods.md §1.1 'Ties'", True),
        ("docs/methods.md §0, §1.1, §7", True),
        ("docs/methods.md §4.2–4.3", True),
        ("docs/methods.md §1.1 'No such paragraph'", False),
        ("docs/methods.md §9.9", False),
        ("docs/methods.md §1.6", False),
    ],
)
def test_the_checker_itself(text, ok):
    chain = EXPLICIT_RE.search(text).group("chain")
    assert (check_chain(chain, "example") == []) is ok


def test_external_citations_are_not_taken_for_methods_sections():
    line = "follow RFC 9457 §3.2 and Li et al. 2018 §2–3, not docs/methods.md §9"
    chains = [c for c in CHAIN_RE.finditer(line) if not EXTERNAL_BEFORE.search(line[: c.start()].rstrip(" ("))]
    assert [c.group(0) for c in chains] == ["§9"]
