"""The project's documentation in docs/ is consistent with the tree and with the code.

* every ``docs/<page>.md §X`` citation (lists and ranges included) in the code, tests,
  notebooks, benchmarks, README.md and docs/ names a numbered heading of that page;
* no citation of the old research note (``math.md`` and a section sign, without ``docs/``) and
  no relative path into the shared folder outside the repository is left;
* the "rebuild a Jacobian block without jacntk" snippet of docs/math.md, run against a real
  Gram store, reproduces ``jacntk.kernel(..., jacobian=True)``;
* every relative link of docs/*.md and README.md points at an existing file.

Failures name the offending ``file:line`` (``file cell N line M`` for notebooks).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import jacntk

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CITING = ("jacntk", "tests", "notebooks", "benchmarks", "docs")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".sh", ".rst"}
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".ruff_cache"}
SKIP_DIRS |= {".pytest_cache", ".ipynb_checkpoints", "node_modules", "scratch"}
#: The migration tool quotes the old citation form in its own documentation.
MIGRATION_SCRIPT = DOCS / "_migrate_citations.py"

NUM = r"\d+(?:\.\d+)*"
SEP = r"\s*(?:,|;|/|–|—|-|\band\b|\bor\b)\s*"
CITATION = re.compile(rf"(?<![\w-])((?:\.\./)*docs/[\w.-]+\.md)\s+§({NUM}(?:{SEP}§{NUM})*)")
BARE_NOTE = re.compile(r"(?<!docs/)\bmath\.md\s+§")
SHARED = re.compile(r"\.\./shared/")
HEADING = re.compile(rf"^#{{2,4}}\s+({NUM})\.?\s")
SECTION = re.compile(rf"§({NUM})")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _files(folders=None, suffixes=TEXT_SUFFIXES):
    bases = [ROOT / f for f in folders] if folders else [ROOT]
    for base in bases:
        for path in sorted(base.rglob("*")) if base.is_dir() else [base]:
            rel = path.relative_to(ROOT)
            if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts[:-1]):
                continue
            if path.is_file() and path.suffix in suffixes:
                yield path


def _texts(path: Path):
    """``(where, text)`` pieces of a file: the whole file, and for notebooks each cell's
    source (joined) as well, so that citations broken across JSON lines are seen."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    rel = path.relative_to(ROOT)
    yield str(rel), raw
    if path.suffix == ".ipynb":
        for k, cell in enumerate(json.loads(raw).get("cells", [])):
            source = cell.get("source", "")
            yield f"{rel} cell {k}", "".join(source) if isinstance(source, list) else source


def _where(label: str, text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"{label} line {line}" if " cell " in label else f"{label}:{line}"


def headings(page: Path) -> set[str]:
    """Section numbers of a page's numbered headings (``## 3. Title``, ``### 3.2 Title``)."""
    out, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.add(m.group(1))
    return out


def test_math_page_has_numbered_sections():
    numbers = headings(DOCS / "math.md")
    assert {"1", "1.4", "4.2", "8.2", "11.4", "13"} <= numbers, sorted(numbers)


def test_docs_citations_resolve_to_numbered_headings():
    cache: dict[Path, set[str]] = {}
    bad = []
    sources = [ROOT / "README.md", *_files(CITING)]
    for path in sources:
        for label, text in _texts(path):
            if label.endswith(".ipynb"):
                continue  # raw notebook JSON: its cells are checked one by one
            for m in CITATION.finditer(text):
                page = ROOT / re.sub(r"^(\.\./)+", "", m.group(1))
                if not page.is_file():
                    bad.append(f"{_where(label, text, m.start())}: {m.group(1)} does not exist")
                    continue
                numbers = cache.setdefault(page, headings(page))
                for number in SECTION.findall(m.group(2)):
                    if number not in numbers:
                        where = _where(label, text, m.start())
                        bad.append(f"{where}: {m.group(1)} has no section §{number}")
    assert not bad, "citations of missing sections:\n" + "\n".join(bad)


def test_math_page_internal_references_resolve():
    page = DOCS / "math.md"
    numbers = headings(page)
    text = page.read_text(encoding="utf-8")
    bad = [
        f"docs/math.md:{text.count(chr(10), 0, m.start()) + 1}: §{m.group(1)}"
        for m in SECTION.finditer(text)
        if m.group(1) not in numbers
    ]
    assert not bad, "references to missing sections:\n" + "\n".join(bad)


def test_no_citation_of_the_research_note_or_shared_paths_remains():
    """Fails until ``python docs/_migrate_citations.py`` has been run on the tree."""
    bad = []
    for path in _files():
        if path == MIGRATION_SCRIPT:
            continue
        for label, text in _texts(path):
            for pattern, what in (
                (BARE_NOTE, "bare math.md citation"),
                (SHARED, "path into the shared folder"),
            ):
                for m in pattern.finditer(text):
                    bad.append(f"{_where(label, text, m.start())}: {what}: {m.group(0)!r}")
    assert not bad, "old citations left (run docs/_migrate_citations.py):\n" + "\n".join(
        sorted(set(bad))
    )


def _snippet() -> str:
    """The first python block after the heading of §11.4 of docs/math.md."""
    text = (DOCS / "math.md").read_text(encoding="utf-8")
    start = re.search(r"^### 11\.4 ", text, re.M)
    assert start, "docs/math.md has no section 11.4"
    block = re.search(r"```python\n(.*?)```", text[start.end() :], re.S)
    assert block, "no python block in docs/math.md §11.4"
    return block.group(1)


@pytest.mark.parametrize(
    "activation, kind, dtype, rtol",
    [("erf", "ntk", "float64", 1e-12), ("gelu", "nngp", "float32", 1e-5)],
)
def test_store_snippet_rebuilds_the_jacobian_blocks(
    activation, kind, dtype, rtol, client, tmp_path
):
    code = _snippet()
    assert not re.search(r"^\s*(import|from)\s+jacntk", code, re.M), "the snippet imports jacntk"
    arch = jacntk.MLP(2, activation, sigma_w=1.2, sigma_b=0.3, kappa=0.7)
    X = np.random.default_rng(3).standard_normal((7, 3))
    path = tmp_path / "jac.zarr"
    # tile 3: diagonal, upper, lower and ragged tiles all occur
    jacntk.assemble(arch, X, path, kind=kind, jacobian=True, tile=3, dtype=dtype, client=client)
    namespace = {"path": str(path)}
    exec(compile(code, "docs/math.md §11.4", "exec"), namespace)  # noqa: S102
    assert np.isnan(namespace["g"]["K"][...][namespace["lower"]]).all(), "lower chunks written"
    d = X.shape[1]
    want = jacntk.kernel(arch, X, kind=kind, jacobian=True).reshape(7, d + 1, 7, d + 1)
    got = np.stack([np.stack([namespace["block"](i, j) for j in range(7)], 1) for i in range(7)])
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= rtol * scale, f"rebuilt blocks differ by {err:.3e} (scale {scale:.3e})"


def _links(page: Path):
    fenced = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            yield number, m.group(1)


def test_relative_links_point_at_existing_files():
    bad = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for number, target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # URLs, mailto:, anchors within the page
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not resolved.exists():
                bad.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not bad, "links to missing files:\n" + "\n".join(bad)


def _migration_module():
    if not MIGRATION_SCRIPT.is_file():
        pytest.skip("docs/_migrate_citations.py has been removed")
    spec = importlib.util.spec_from_file_location("_migrate_citations", MIGRATION_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_targets_exist_and_rewrite_is_idempotent():
    mig = _migration_module()
    numbers = headings(DOCS / "math.md")
    targets = set(mig.SECTIONS.values())
    targets |= {n for text in mig.RANGES.values() for n in SECTION.findall(text)}
    assert targets <= numbers, f"mapped to missing sections: {sorted(targets - numbers)}"
    note = "math" + ".md"  # not spelled out: this file must not cite the old note itself
    old = f"x ({note} §0.5, §5.9) y {note}\n§4.1; ranges §5.5–§5.7 ({note} §4.3–§4.4), (§5.2)."
    once, changes = mig.rewrite_text(old, "sample", bare=True)
    assert once == (
        "x (docs/math.md §1.5, §7) y docs/math.md\n§3.3; ranges docs/math.md §5.2–§5.4 "
        "(docs/math.md §3.5, §8.2), (docs/math.md §4.2)."
    )
    assert len(changes) == 5
    assert mig.rewrite_text(once, "sample", bare=True) == (once, [])
