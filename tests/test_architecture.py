"""The package's shape, kept by tests (static: the imports are read from the source).

- ``annotator.core`` is pure numerics: the standard library, numpy and torch only.
- Only ``annotator.distributed.ray_runner`` imports ray (the engine, the shard processor
  and the benchmark run without Ray, e.g. on a GPU machine that has none).
- Nothing in the product imports the benchmark suite (``benchmarks/``, beside ``tests/``),
  and the wheel holds neither it nor the tests.
- No import cycles between modules, and none between the stage packages.
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
