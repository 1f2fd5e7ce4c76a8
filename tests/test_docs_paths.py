"""Every piece of code the README and the docs name exists: source paths, modules (and their names), map rows.

Checked in README.md, docs/*.md and benchmarks/README.md:

* ``src/eve_lightning/...`` paths;
* ``eve_lightning.a.b`` modules, and ``eve_lightning.a.b.name`` where ``name`` is defined (or imported) at the top
  of the module;
* backticked ``.py`` paths with a folder (``models/fp8.py``), from the repository root or from ``src/eve_lightning``;
* in the README's map of the code, every path of a row: a bare file name in the row's own folder (``options.py``
  in the ``src/eve_lightning/data/`` row is ``data/options.py``), a path with a folder there, at the repository root
  or in ``src/eve_lightning``; and every package has a row.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from tests.helpers.repo_paths import REPO

SRC = REPO / "src"
PACKAGE = SRC / "eve_lightning"
DOCS = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")])
SOURCE_PATH = re.compile(r"src/eve_lightning(?:/[\w.-]+)*/?")
MODULE = re.compile(r"\beve_lightning(?:\.[A-Za-z_]\w*)+")
BACKTICKED = re.compile(r"`([^`\s]+)`")
PATH_LIKE = re.compile(r"[\w.-]+(?:/[\w.-]*)*")
FILE_SUFFIXES = (".py", ".html", ".yaml", ".sh", ".md")
COMMAND_NAMES = {"eve_lightning/demo"}  # only ``python -m eve_lightning.demo``, the webui/ row names it


@functools.cache
def top_level_names(module: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (inside top-level ``if`` / ``try`` blocks too)."""
    names: set[str] = set()
    todo = list(ast.parse(module.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []), *getattr(node, "handlers", [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return frozenset(names)


def module_problem(dotted: str) -> str | None:
    """Why ``eve_lightning.a.b[.name]`` does not resolve to a module (and a name in it), or None."""
    parts = dotted.split(".")[1:]
    path, module = PACKAGE, PACKAGE / "__init__.py"
    for i, part in enumerate(parts):
        if (path / part).is_dir():
            path, module = path / part, path / part / "__init__.py"
        elif (path / f"{part}.py").is_file():
            module, rest = path / f"{part}.py", parts[i + 1 :]
            break
        else:
            rest = parts[i:]
            break
    else:
        return None
    if not rest:
        return None
    if len(rest) > 1 or not module.is_file() or rest[0] not in top_level_names(module):
        return f"{'.'.join(rest)} is neither a module nor a name defined in {module.relative_to(REPO)}"
    return None


def exists_from(path: str, *bases: Path) -> bool:
    return any((base / path.rstrip("/")).exists() for base in bases)


def doc_problems(text: str) -> list[str]:
    """The source paths, modules and backticked ``.py`` paths that ``text`` names and the repository lacks."""
    missing = []
    for match in SOURCE_PATH.finditer(text):
        path = match.group().rstrip(".")
        if not (REPO / path).exists():
            missing.append(path)
    for match in MODULE.finditer(text):
        problem = module_problem(match.group())
        if problem:
            missing.append(f"{match.group()}: {problem}")
    for token in BACKTICKED.findall(text):
        if (
            "/" in token
            and token.endswith(".py")
            and PATH_LIKE.fullmatch(token)
            and not exists_from(token, REPO, PACKAGE)
        ):
            missing.append(token)
    return sorted(set(missing))


def map_rows(readme: str) -> list[list[str]]:
    """The table rows of the README's map of the code, as lists of cells."""
    section = readme.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def map_problems(readme: str) -> list[str]:
    """The paths in the map's rows that are not there.

    A bare file name (``options.py``) is looked up in the row's folder; a path with a folder (``planner/cli.py``) in
    the row's folder, the repository root or ``src/eve_lightning``.
    """
    missing = []
    for cells in map_rows(readme):
        first = BACKTICKED.findall(cells[0])[0]
        head = next((base / first for base in (REPO, PACKAGE) if (base / first.rstrip("/")).exists()), None)
        if head is None:
            missing.append(first)
            continue
        folder = head if head.is_dir() else head.parent
        for token in BACKTICKED.findall(" | ".join(cells)):
            if not PATH_LIKE.fullmatch(token) or token.startswith("."):
                continue
            if "/" in token:
                found = exists_from(token, folder, REPO, PACKAGE)
            elif token.endswith(FILE_SUFFIXES):
                found = (folder / token).exists()
            else:
                continue
            if not found:
                missing.append(f"{token} (row {first})")
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_source_paths_and_modules_exist(doc: Path):
    missing = doc_problems(doc.read_text())
    assert not missing, f"{doc.relative_to(REPO)} names what is not in the repository: {missing}"


def test_every_path_of_the_code_map_exists():
    readme = (REPO / "README.md").read_text()
    assert len(map_rows(readme)) > 30, "the README's map of the code was not found (section '## Map of the code')"
    missing = map_problems(readme)
    assert not missing, f"the README's map of the code names what is not there: {missing}"


def test_the_checks_catch_moved_code():
    text = (
        "`python -m eve_lightning.planner.cli` reads `src/eve_lightning/utils/memory_model.py`, "
        "eve_lightning.utils.throughput_tables, eve_lightning.planner.cli.main and eve_lightning.planner.cli.nothing; "
        "see `utils/flops.py` and `utils/gone.py`."
    )
    assert doc_problems(text) == [
        "eve_lightning.planner.cli.nothing: nothing is neither a module nor a name defined in "
        "src/eve_lightning/planner/cli.py",
        "eve_lightning.utils.throughput_tables: throughput_tables is neither a module nor a name defined in "
        "src/eve_lightning/utils/__init__.py",
        "src/eve_lightning/utils/memory_model.py",
        "utils/gone.py",
    ]
    readme = (
        "## Map of the code\n\n| path | what |\n|---|---|\n"
        "| `src/eve_lightning/planner/` | `memory.py`, `memory_model.py`, `train.py`, `models/fp8.py` |\n"
        "| `models/fp8.py` | `fused_ce.py`, `evev2/`, `evev3/` |\n| `src/eve_lightning/gone/` | |\n\n## Next\n"
    )
    assert map_problems(readme) == [
        "memory_model.py (row src/eve_lightning/planner/)",
        "train.py (row src/eve_lightning/planner/)",
        "evev3/ (row models/fp8.py)",
        "src/eve_lightning/gone/",
    ]


def test_the_map_lists_every_package():
    """Every package under src/eve_lightning has a row (or, for a subpackage of models/, its own row)."""
    readme = (REPO / "README.md").read_text()
    firsts = {BACKTICKED.findall(cells[0])[0].rstrip("/") for cells in map_rows(readme)}
    packages = {p.parent.relative_to(SRC).as_posix() for p in PACKAGE.glob("*/__init__.py")}
    packages |= {p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("models/*/__init__.py")}
    unlisted = sorted(p for p in packages - COMMAND_NAMES if p not in firsts and f"src/{p}" not in firsts)
    assert not unlisted, f"packages missing from the README's map of the code: {unlisted}"
