"""Rewrite citations of the old research note (``math.md §N.M``) to ``docs/math.md §X.Y``.

The code, tests, notebooks, benchmarks and READMEs cite the research note the design started
from by its section numbers.  The project's own account, docs/math.md, is numbered differently;
this script rewrites every such citation with the explicit table ``SECTIONS`` (old -> new),
including every ``§`` of a list (``§0.5, §5.9``) or range (``§5.5–§5.7``; ``RANGES`` rewrites
some ranges as a whole because their endpoints land in different places).

Also rewritten: bare ``§N.M`` references in Python files of ``jacntk/``, ``tests/`` and
``benchmarks/`` that cite the research note elsewhere (a docstring that says
``(math.md §0.2, §0.5)`` and, two lines on, ``(§5.9)`` means the same note); they become
``docs/math.md §X.Y`` as well.

Files: ``.py``, ``.md`` and ``.ipynb`` (cell sources only; written back with
``json.dump(nb, f, indent=1, ensure_ascii=False)`` and a trailing newline) under the repository
root, except ``docs/`` (the new pages already use the new numbering), virtual environments,
caches and build output.  Only files that change are written.  Idempotent: a rewritten citation
is prefixed with ``docs/`` and is never matched again.  Prints every change, and at the end the
Python lines the rewrite pushed past 100 characters (rewrap those by hand; ruff checks E501).

Usage::

    python docs/_migrate_citations.py            # rewrite the repository this file is in
    python docs/_migrate_citations.py --check    # only print what would change (exit 1 if any)
    python docs/_migrate_citations.py ROOT       # another checkout
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

#: Old section of the research note -> section of docs/math.md.
SECTIONS = {
    "0": "1",  # conventions
    "0.1": "1.1",
    "0.2": "1.2",
    "0.3": "1.3",
    "0.4": "1.4",
    "0.5": "1.5",
    "0.6": "1.6",
    "1": "2",  # network
    "1.1": "2.1",
    "1.2": "2.2",
    "2": "3.2",  # Jacobian NNGP
    "2.1": "3.2",
    "2.2": "3.2",
    "3": "8.1",  # training objective and gradient flow
    "4": "3",  # JNTK (definition, limits); its ODE is 8.2
    "4.1": "3.3",
    "4.2": "3.4",
    "4.3": "3.5",
    "4.4": "8.2",
    "4.5": "8.6",
    "5": "4",  # structure
    "5.1": "4.1",
    "5.2": "4.2",
    "5.3": "6.2",
    "5.4": "6.1",
    "5.5": "5.2",
    "5.6": "5.3",
    "5.7": "5.4",
    "5.8": "5.5",
    "5.9": "7",  # ReLU: the whole section
    "5.10": "5.6",
    "5.11": "10.5",
    "6": "9",  # depth
    "6.1": "9.1",
    "6.2": "9.2",
    "6.3": "9.3",
    "6.4": "9.4",
    "7": "10.3",  # width scalings
    "8": "12",  # experiments
    "9": "13",  # what could not be established
}

#: Ranges rewritten as a whole (old start, old end) -> replacement (without "docs/math.md ").
RANGES = {
    ("4.3", "4.4"): "§3.5, §8.2",
    ("5.5", "5.7"): "§5.2–§5.4",
    ("5.5", "5.9"): "§5.1–§5.4, §7.1",
    ("6", "8"): "§9, §10.3, §12",
}

NEW_FILE = "docs/math.md"
SUFFIXES = (".py", ".md", ".ipynb")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".ruff_cache"}
SKIP_DIRS |= {".pytest_cache", ".ipynb_checkpoints", "node_modules", "docs"}
#: Python files under these top-level folders also get their bare "§N.M" rewritten.
BARE_DIRS = ("jacntk", "tests", "benchmarks")
LINE_LIMIT = 100

_NUM = r"\d+(?:\.\d+)*"
_SEP = r"\s*(?:,|;|/|–|—|-|\band\b|\bor\b)\s*"
#: A citation of any markdown file: "<file>.md §N" plus list/range continuations.
_CITATION = rf"(?P<file>[\w./-]*\.md)(?P<ws>\s+)§(?P<first>{_NUM})(?P<rest>(?:{_SEP}§{_NUM})*)"
_BARE = rf"(?<![\w§])§(?P<bare>{_NUM})(?P<bare_rest>(?:{_SEP}§{_NUM})*)"
PATTERN = re.compile(rf"{_CITATION}|{_BARE}")
_ITEM = re.compile(rf"(?P<sep>{_SEP})?§(?P<num>{_NUM})")
_DASHES = ("–", "—", "-")


def _new(old: str, where: str) -> str:
    if old not in SECTIONS:
        raise KeyError(f"{where}: no mapping for old section §{old}; add it to SECTIONS")
    return SECTIONS[old]


def rewrite_list(text: str, where: str) -> str:
    """``"§0.5, §5.9"`` -> ``"§1.5, §7"``: every item mapped, ranges through ``RANGES`` or
    endpoint by endpoint, repeated items of a list dropped."""
    items = [(m["sep"] or "", m["num"]) for m in _ITEM.finditer(text)]
    out: list[tuple[str, str]] = []  # (separator, new text)
    k = 0
    while k < len(items):
        sep, num = items[k]
        nxt = items[k + 1] if k + 1 < len(items) else None
        if nxt is not None and nxt[0].strip() in _DASHES and (num, nxt[1]) in RANGES:
            out.append((sep, RANGES[num, nxt[1]]))
            k += 2
            continue
        new = "§" + _new(num, where)
        is_range_end = sep.strip() in _DASHES
        if not is_range_end and out and any(new == text_ for _, text_ in out):
            k += 1  # "§2.1, §2.2" both map to §3.2: keep one
            continue
        out.append((sep, new))
        k += 1
    return "".join(sep + new for sep, new in out)


def rewrite_text(text: str, where: str, bare: bool) -> tuple[str, list[tuple[int, str, str]]]:
    """Rewrite the citations of one text; returns the new text and (line, old, new) triples
    (line numbers of ``text``, from 1)."""
    changes: list[tuple[int, str, str]] = []

    def sub(m: re.Match) -> str:
        whole = m.group(0)
        if m["file"] is not None:
            if m["file"] != "math.md":  # docs/math.md (done), other files: leave alone
                return whole
            new = "docs/math.md" + m["ws"] + rewrite_list("§" + m["first"] + m["rest"], where)
        else:
            if not bare:
                return whole
            new = "docs/math.md " + rewrite_list(whole, where)
        if new != whole:
            changes.append((text.count("\n", 0, m.start()) + 1, whole, new))
        return new

    return PATTERN.sub(sub, text), changes


def _cites_note(text: str) -> bool:
    return any(m["file"] == "math.md" for m in PATTERN.finditer(text) if m["file"])


def _candidates(root: Path):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path.suffix in SUFFIXES and path.is_file():
            yield path, rel


def migrate_file(path: Path, rel: Path, write: bool) -> tuple[list[str], list[str]]:
    """Rewrite one file; returns (printed change lines, long-line warnings)."""
    raw = path.read_text(encoding="utf-8")
    report, long_lines = [], []
    bare = path.suffix == ".py" and rel.parts[0] in BARE_DIRS and _cites_note(raw)
    if path.suffix == ".ipynb":
        nb = json.loads(raw)
        changed = False
        for index, cell in enumerate(nb.get("cells", [])):
            source = cell.get("source", "")
            text = "".join(source) if isinstance(source, list) else source
            new, changes = rewrite_text(text, f"{rel} cell {index}", bare=False)
            if new != text:
                changed = True
                cell["source"] = new.splitlines(keepends=True) if isinstance(source, list) else new
                report += [f"{rel} cell {index}: {a!r} -> {b!r}" for _, a, b in changes]
        if changed and write:
            with path.open("w", encoding="utf-8") as f:
                json.dump(nb, f, indent=1, ensure_ascii=False)
                f.write("\n")
        return report, long_lines
    new, changes = rewrite_text(raw, str(rel), bare)
    if new == raw:
        return report, long_lines
    report += [f"{rel}:{line}: {a!r} -> {b!r}" for line, a, b in changes]
    if path.suffix == ".py":
        old_long = {ln for ln in raw.splitlines() if len(ln) > LINE_LIMIT}
        for number, ln in enumerate(new.splitlines(), 1):
            if len(ln) > LINE_LIMIT and ln not in old_long:
                long_lines.append(f"{rel}:{number}: {len(ln)} characters")
    if write:
        path.write_text(new, encoding="utf-8")
    return report, long_lines


def migrate(root: Path, write: bool = True) -> tuple[list[str], list[str]]:
    """Rewrite every candidate file under ``root``; returns (changes, long-line warnings)."""
    changes, long_lines = [], []
    for path, rel in _candidates(root):
        c, w = migrate_file(path, rel, write)
        changes += c
        long_lines += w
    return changes, long_lines


def _leftovers(root: Path) -> list[str]:
    """Bare citations left in docs/ (never rewritten here: the pages use the new numbering)."""
    out = []
    for path in sorted((root / "docs").glob("*.md")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in PATTERN.finditer(line):
                if m["file"] == "math.md":
                    out.append(f"docs/{path.name}:{number}: {m.group(0)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--check", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    changes, long_lines = migrate(root, write=not args.check)
    for line in changes:
        print(line)
    files = {c.split(":")[0].split(" cell ")[0] for c in changes}
    verb = "would rewrite" if args.check else "rewrote"
    print(f"{verb} {len(changes)} citation(s) in {len(files)} file(s) under {root}")
    for line in long_lines:
        print(f"line too long after the rewrite (rewrap by hand): {line}")
    for line in _leftovers(root):
        print(f"not rewritten (docs/ is skipped), fix by hand: {line}")
    return 1 if (args.check and changes) else 0


if __name__ == "__main__":
    sys.exit(main())
