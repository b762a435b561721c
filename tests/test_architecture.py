"""The package's shape, kept by tests (static: the imports are read from the source).

- ``annotator.core`` is pure numerics: the standard library, numpy and torch only.
- Only ``annotator.distributed.ray_runner`` imports ray (the engine, the shard processor
  and the benchmark run without Ray, e.g. on a GPU machine that has none).
- Nothing in the product imports the benchmark suite (``benchmarks/``, beside ``tests/``),
  and the wheel holds neither it nor the tests.
- No import cycles between modules, and none between the stage packages.
- ``docs/design.md`` and the tree agree, read from the document itself: its tree names
  every module once (and nothing else), and every import between modules follows its
  table "Layers and arrows" (a row imports only rows above it that it names), apart from
  the wrong-way arrows it still lists.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "annotator"
STDLIB = set(sys.stdlib_module_names)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``name`` imports (at any depth in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # `from annotator.x import y`: y may be a module
                if f"{mod}.{a.name}" in MODULES:
                    found.add(f"{mod}.{a.name}")
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES and n != "annotator"}


def test_core_imports_only_numpy_and_torch():
    for name, imported in IMPORTS.items():
        if not name.startswith("annotator.core"):
            continue
        for mod in imported:
            top = mod.split(".")[0]
            assert top in STDLIB or top in ("numpy", "torch") or mod.startswith("annotator.core"), (name, mod)


def test_only_the_ray_runner_imports_ray():
    offenders = {name for name, imported in IMPORTS.items()
                 if any(m == "ray" or m.startswith("ray.") for m in imported)}
    assert offenders == {"annotator.distributed.ray_runner"}, offenders


def test_the_product_never_imports_the_benchmark():
    offenders = {(name, m) for name, imported in IMPORTS.items()
                 for m in imported if m.split(".")[0] in ("benchmarks", "tests") or m.startswith("annotator.bench")}
    assert not offenders, offenders


def test_the_wheel_holds_the_package_and_no_benchmark(tmp_path):
    """``pip wheel .`` on a copy of the source tree (the build leaves ``build/`` and the
    egg-info behind, so not in the checkout): the wheel has every module of ``annotator``
    and no ``benchmarks``, ``bench`` or ``tests`` module. Offline: the tree's own
    setuptools builds it (``--no-build-isolation``; the test extra requires it)."""
    root = PACKAGE.parent
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("annotator", "benchmarks", "tests"):
        shutil.copytree(root / name, src / name, ignore=junk)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("annotator-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    modules = {f[:-3].replace("/", ".").removesuffix(".__init__") for f in files if f.endswith(".py")}
    assert modules >= set(MODULES), sorted(set(MODULES) - modules)
    foreign = sorted(m for m in modules if m.split(".")[0] != "annotator" or ".bench" in m)
    assert not foreign, foreign


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules():
    graph = {name: _internal(imported) - {name} for name, imported in IMPORTS.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the flow
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert _cycle(graph) is None, _cycle(graph)


def _stage(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and name + ".__init__" not in MODULES) else parts[-1]


def test_no_import_cycle_between_stage_packages():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    graph: dict[str, set[str]] = {}
    for name, imported in IMPORTS.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in packages:
            continue
        src = parts[1]
        for m in _internal(imported):
            dst = m.split(".")[1] if len(m.split(".")) > 1 else None
            if dst in packages and dst != src:
                graph.setdefault(src, set()).add(dst)
    assert _cycle(graph) is None, _cycle(graph)


def test_one_name_one_module():
    """A reader finds each module in one try: no two modules of the package share a file
    name (``annotator/reduce.py`` the command, ``annotator/outputs/merge.py`` what it
    runs), except the package markers ``__init__`` and ``__main__``."""
    by_name: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.stem not in ("__init__", "__main__"):
            by_name.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE.parent)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"modules sharing a name (rename one of each): {shared}"


# ------------------------------------------------------------ docs/design.md, read by the tests

DESIGN = PACKAGE.parent / "docs" / "design.md"


def _section(text: str, heading: str) -> list[str]:
    """The lines of the section under ``heading`` (a Markdown heading line, any level),
    up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading) + 1
    out = []
    for line in lines[start:]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        out.append(line)
    return out


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """The Markdown tables in ``lines``: each a list of rows, each a list of cell texts
    (header and ``|---|`` separator rows left out)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in lines:
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:  # the header row
            current = []
            tables.append(current)
        elif not all(set(c) <= set("-: ") for c in cells):
            current.append(cells)
    return tables


def _ticked(cell: str) -> list[str]:
    """The backticked names of a cell, in order (the rest is for the reader)."""
    return cell.split("`")[1::2]


def _design_layers() -> tuple[list[str], dict[str, list[str]], set[tuple[str, str]]]:
    """docs/design.md's "Layers and arrows": the rows bottom to top (``core/``,
    ``config.py``, ``export/__main__.py``: paths relative to ``annotator/``), what each
    may import, and the wrong-way arrows still listed, as (module, imported) pairs."""
    text = DESIGN.read_text(encoding="utf-8")
    arrows = _tables(_section(text, "## Layers and arrows"))[0]
    wrong_way = [row for table in _tables(_section(text, "### Wrong-way arrows still in the tree")) for row in table]
    order: list[str] = []
    allowed: dict[str, list[str]] = {}
    for _layer, row, may_import in arrows:
        (name,) = _ticked(row)
        assert name not in allowed, f"docs/design.md: the row {name} is in the layers' table twice"
        order.append(name)
        allowed[name] = _ticked(may_import)
    exceptions = set()
    for cells in wrong_way:
        (module,), (imported,) = _ticked(cells[0]), _ticked(cells[1])
        exceptions.add((f"annotator.{module}", f"annotator.{imported}"))
    return order, allowed, exceptions


def _row_of(module: str, rows: list[str]) -> str | None:
    """The most specific row of the layers' table that holds ``module`` (a dotted name):
    its own file (``export/__main__.py``), else its innermost folder that is a row
    (``export/``); None when no row holds it."""
    rel = MODULES[module].relative_to(PACKAGE).as_posix()
    candidates = [rel] + [p.as_posix() + "/" for p in Path(rel).parents if p.as_posix() != "."]
    return next((c for c in candidates if c in rows), None)


def test_the_layers_table_of_docs_design_md_points_only_down():
    """The table itself is a layering: every row names only rows above it (so it has no
    cycle), each row holds at least one module, and every module is in exactly one row."""
    order, allowed, _ = _design_layers()
    problems = []
    for i, row in enumerate(order):
        for target in allowed[row]:
            if target not in order:
                problems.append(f"{row} may import {target}, which is no row of the table")
            elif order.index(target) >= i:
                problems.append(f"{row} may import {target}, a row at or below it (arrows point down only)")
        if not (PACKAGE / row).exists():
            problems.append(f"the row {row} is no file or folder of annotator/")
    unplaced = sorted(m for m in MODULES if _row_of(m, order) is None)
    if unplaced:
        problems.append(f"modules in no row of the table: {unplaced}")
    assert not problems, "docs/design.md, Layers and arrows:\n" + "\n".join(problems)


def test_imports_follow_the_layers_of_docs_design_md():
    """Every import of one module of the package by another (at any depth of the file:
    a late import inside a function is an arrow too) is allowed by docs/design.md's
    table, or listed there as a wrong-way arrow still in the tree. The root ``annotator``
    is left out: its names load on first use (``from annotator import __version__``)."""
    order, allowed, exceptions = _design_layers()
    offending, seen_exceptions = [], set()
    for name in sorted(IMPORTS):
        src = _row_of(name, order)
        for imported in sorted(_internal(IMPORTS[name])):
            dst = _row_of(imported, order)
            if src is None or dst is None or dst == src or dst in allowed[src]:
                continue  # unplaced modules fail the table's own test
            if (name, imported) in exceptions:
                seen_exceptions.add((name, imported))
                continue
            offending.append((name, imported))
    assert not offending, (
        "imports that docs/design.md's 'Layers and arrows' does not allow (importer's row -> imported row);"
        " point the import down the table, or change the table if the design changed:\n"
        + "\n".join(f"  {m} -> {i}   ({_row_of(m, order)} -> {_row_of(i, order)})" for m, i in offending))
    gone = sorted(exceptions - seen_exceptions)
    assert not gone, f"wrong-way arrows listed in docs/design.md but gone from the tree (remove them there): {gone}"


def _design_tree() -> list[str]:
    """The paths (relative to ``annotator/``; folders end in ``/``) named by the code block
    under docs/design.md's "The tree", from the indentation (two spaces per level)."""
    section = _section(DESIGN.read_text(encoding="utf-8"), "## The tree")
    start = section.index("```") + 1
    block = section[start: section.index("```", start)]
    assert block and block[0].strip() == "annotator/", "docs/design.md: The tree must start with annotator/"
    folders: list[str] = []
    paths = []
    for number, line in enumerate(block[1:], start=2):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and 2 <= indent <= 2 * (len(folders) + 1), \
            f"docs/design.md, The tree, line {number} of the block: indentation {indent} ({line!r})"
        name, _, job = line.strip().partition(" ")
        assert job.strip() or name.endswith("/"), f"docs/design.md, The tree: {name} has no job written beside it"
        del folders[indent // 2 - 1:]
        path = "".join(folders) + name
        paths.append(path)
        if name.endswith("/"):
            folders.append(name)
    return paths


def test_every_module_is_in_the_tree_of_docs_design_md():
    """docs/design.md's tree names every module of the package once, and names nothing
    that is not there."""
    named = _design_tree()
    repeated = sorted({p for p in named if named.count(p) > 1})
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    missing = sorted(modules - set(named))
    absent = sorted(p for p in named if not (PACKAGE / p).exists() or (p.endswith("/") != (PACKAGE / p).is_dir()))
    assert not (missing or absent or repeated), (
        "docs/design.md's tree and annotator/ differ:"
        + (f"\n  modules not in the tree (add each, with its one job): {missing}" if missing else "")
        + (f"\n  in the tree, not in annotator/: {absent}" if absent else "")
        + (f"\n  named twice: {repeated}" if repeated else ""))


# ------------------------------------------------------------ the driver stays small

#: The driver's entry points: what a run, a merge and a report load before any actor runs.
DRIVER = ("annotator.run", "annotator.job", "annotator.reduce", "annotator.report")
#: What only an actor (or the engine) may load: hundreds of MB of RSS with a CUDA build.
ACTOR_ONLY = ("torch", "open_clip", "torchvision")


def _module_level_imports(name: str) -> set[str]:
    """What importing ``name`` imports at once: the imports of its module-level code
    (class bodies, ``if``/``try``/``with`` blocks included), not those inside functions
    nor under ``if TYPE_CHECKING:``; with each imported module's parent packages, whose
    ``__init__`` runs first."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, len(m.split(".")) + 1)}


def _chain_to(start: str, targets: tuple[str, ...]) -> list[str] | None:
    """The shortest chain of module-level imports from ``start`` to a module of
    ``targets`` (``[start, ..., 'torch']``), or None."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for imported in sorted(_module_level_imports(current)):
            if imported.split(".")[0] in targets:
                chain = [imported, current]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1]
            if imported in MODULES and imported not in parent:
                parent[imported] = current
                queue.append(imported)
    return None


def test_the_driver_imports_no_torch_at_module_level():
    """docs/design.md: the driver (``run``, ``job``, ``reduce``, ``report`` and what they
    import at module level) loads neither torch nor open_clip; a module the driver imports
    that needs them where the actor runs imports them inside that function. Static, and
    naming the chain; ``tests/inputs/test_catalog.py`` runs the driver and checks
    ``sys.modules``."""
    chains = {start: _chain_to(start, ACTOR_ONLY) for start in DRIVER}
    found = {start: chain for start, chain in chains.items() if chain}
    assert not found, "the driver imports an actor-only library at module level:\n" + "\n".join(
        "  " + " -> ".join(chain) for chain in found.values())
