#!/usr/bin/env python3
"""Rewrite citations of files the repository does not contain (METHODS.md, DESIGN.md, STYLE.md, DATA.md) into
citations of the docs that do hold that content.

Usage::

    python tools/rewrite_refs.py [ROOT]            # rewrite in place, print what changed, exit 1 if anything is left
    python tools/rewrite_refs.py [ROOT] --check    # change nothing; exit 1 if a rewrite is needed

The rules, applied to every text file under ROOT (default: the repository root; .git, virtual environments,
build outputs, egg-info and screenshots are skipped, and so are this script and tests/test_docs_references.py,
which spell the old names on purpose):

1. **METHODS** — the math. docs/methods.md keeps METHODS.md's section numbers, so the rewrite is mechanical:
   ``METHODS §X.Y`` / ``METHODS.md §X.Y`` → ``docs/methods.md §X.Y`` (a chain such as ``§0, §1.1, §7`` and any
   quoted paragraph name after it are kept as they are), ``METHODS.md`` / ``(METHODS.md)`` → ``docs/methods.md``,
   and the prose ``METHODS writes`` → ``docs/methods.md writes``. The Python identifier ``METHODS = (...)`` in
   bench/id_bench.py is not a citation and is left alone (only ``METHODS`` followed by ``.md``, `` §`` or
   `` writes`` is rewritten).

2. **DESIGN** — the service contract. Its content now lives in several pages, so each section maps to the page
   that holds it (the section number is dropped unless the target page is docs/methods.md, whose numbers are
   stable):

   ======  ===========================================  =====================================================
   DESIGN  content                                      now cited as
   ======  ===========================================  =====================================================
   §1      layout, import direction, image              docs/deployment.md ("How it is put together")
   §2      data flow: upload, canonical form, analysis  docs/deployment.md ("How it is put together")
   §2.4    schedules                                    docs/dashboard.md ("Scheduled re-analysis")
   §3      supported inputs and their errors            README.md ("Inputs")
   §4      estimator contract and registry              docs/methods.md §0 ("The estimator contract")
   §5      the report document                          docs/methods.md §0 ("The report document")
   §6      REST API, auth, ownership                    docs/deployment.md
   §7      model specs                                  docs/methods.md §4 ("Model specs")
   §8      settings, embedded default                   docs/deployment.md ("Settings")
   §9      dashboard and CLI                            docs/dashboard.md
   §10     scaling past one machine                     docs/deployment.md
   ======  ===========================================  =====================================================

   A chain or range (``DESIGN.md §2, §8``, ``DESIGN.md §2–3``) becomes the distinct pages of its sections, in
   order (``docs/deployment.md, README.md``). A bare ``DESIGN.md`` (no section) becomes docs/deployment.md.

3. **STYLE** — coding conventions, not user documentation: the parenthesised citation is removed
   (``Functions only flush (STYLE.md, Persistence).`` → ``Functions only flush.``).

4. **DATA** — the offline-data notes: ``(DATA.md)`` is removed and a leading ``DATA.md: `` is dropped.

After rewriting, every remaining mention of METHODS.md, DESIGN.md, STYLE.md or DATA.md (or ``METHODS §`` /
``DESIGN §``) is printed and the exit status is 1, so nothing is left half-done silently.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "screenshots", ".taskgauge"}
SKIP_FILES = {"tools/rewrite_refs.py", "tests/test_docs_references.py"}
TEXT_SUFFIXES = set(".py .pyi .js .html .css .md .rst .txt .c .h .toml .cfg .ini .yml .yaml .sh .json".split())
TEXT_NAMES = {"Dockerfile", "Makefile", "run"}

# DESIGN section -> where its content lives now
DESIGN_MAP = {
    "1": "docs/deployment.md",
    "2": "docs/deployment.md",
    "2.4": "docs/dashboard.md",
    "3": "README.md",
    "4": "docs/methods.md §0",
    "5": "docs/methods.md §0",
    "6": "docs/deployment.md",
    "7": "docs/methods.md §4",
    "8": "docs/deployment.md",
    "9": "docs/dashboard.md",
    "10": "docs/deployment.md",
}
DESIGN_DEFAULT = "docs/deployment.md"

SEC = r"\d+(?:\.\d+)*"
# "§2", "§2.4", "§2–3" (a range of top-level sections), chained with ", §" / "; §" / " and §"
DESIGN_RE = re.compile(rf"DESIGN(?:\.md)?(?P<chain> §{SEC}(?:[–-]{SEC})?(?:(?:, |; | and )§{SEC}(?:[–-]{SEC})?)*)?")


def _design_target(match: re.Match[str]) -> str:
    chain = match.group("chain")
    if not chain:
        return DESIGN_DEFAULT
    sections: list[str] = []
    for item in re.findall(rf"§({SEC}(?:[–-]{SEC})?)", chain):
        if re.search("[–-]", item):
            lo, hi = re.split("[–-]", item)
            sections += [str(s) for s in range(int(lo.split(".")[0]), int(hi.split(".")[0]) + 1)]
        else:
            sections.append(item)
    targets: list[str] = []
    for s in sections:
        target = DESIGN_MAP.get(s) or DESIGN_MAP.get(s.split(".")[0], DESIGN_DEFAULT)
        if target not in targets:
            targets.append(target)
    return ", ".join(targets)


RULES: list[tuple[re.Pattern[str], object]] = [
    # METHODS: the section numbers are kept
    (re.compile(r"\bMETHODS(?:\.md)?(?= §)"), "docs/methods.md"),
    (re.compile(r"\bMETHODS\.md\b"), "docs/methods.md"),
    (re.compile(r"\bMETHODS(?= writes\b)"), "docs/methods.md"),
    # DESIGN: mapped per section
    (DESIGN_RE, _design_target),
    # STYLE: drop the parenthesised citation (and a stray one without parentheses)
    (re.compile(r"\s*\(STYLE(?:\.md)?,?[^)]*\)"), ""),
    # DATA.md: drop
    (re.compile(r"\s*\(DATA\.md\)"), ""),
    (re.compile(r"\bDATA\.md: "), ""),
]

# "docs/methods.md §0; docs/methods.md §0, §1.1, §7" (DESIGN §4 next to a METHODS chain) -> one chain, no repeats
MERGE_RE = re.compile(rf"docs/methods\.md (§{SEC}(?:, §{SEC})*)(?:; |, )docs/methods\.md (§{SEC}(?:, §{SEC})*)")


def _merge(match: re.Match[str]) -> str:
    items: list[str] = []
    for item in (match.group(1) + ", " + match.group(2)).split(", "):
        if item not in items:
            items.append(item)
    return "docs/methods.md " + ", ".join(items)


LEFTOVER_RE = re.compile(r"\b(?:METHODS|DESIGN|STYLE|DATA)\.md\b|\b(?:METHODS|DESIGN) §")


def rewrite_text(text: str) -> str:
    for pattern, repl in RULES:
        text = pattern.sub(repl, text)  # type: ignore[arg-type]
    return MERGE_RE.sub(_merge, text)


def iter_files(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if not path.is_file() or rel.as_posix() in SKIP_FILES:
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            yield path, rel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a rewrite is needed")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()

    changed = 0
    leftovers: list[str] = []
    for path, rel in iter_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = rewrite_text(text)
        if new != text:
            changed += 1
            n = sum(a != b for a, b in zip(text.splitlines(), new.splitlines()))
            print(f"{'would rewrite' if args.check else 'rewrote'} {rel} ({n} lines)")
            if not args.check:
                path.write_text(new, encoding="utf-8")
        for lineno, line in enumerate(new.splitlines(), 1):
            if LEFTOVER_RE.search(line):
                leftovers.append(f"{rel}:{lineno}: {line.strip()[:160]}")
    for item in leftovers:
        print(f"left over: {item}", file=sys.stderr)
    print(f"{changed} files {'need a rewrite' if args.check else 'rewritten'}; {len(leftovers)} references left")
    if args.check:
        return 1 if changed or leftovers else 0
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
