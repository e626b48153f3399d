"""The floor plan holds: the query ships alone, the tools and evaluation run without Spark, bench/ and
tests/ stay apart, and no function outside tests/ is over 80 lines."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import evaluation
import tools
from tools.cluster import SHIPPED_PACKAGES, code_zip

REPO = Path(__file__).resolve().parents[1]


def _modules(package) -> list[str]:
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


def test_tools_and_evaluation_import_without_pyspark():
    modules = _modules(tools) + _modules(evaluation)
    assert "tools.demo" in modules and "evaluation.nab_scoring" in modules, modules
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'pyspark' or m.startswith('pyspark.')))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]", f"importing the tools pulled in pyspark: {res.stdout[:500]}"


def test_the_shipped_zip_holds_the_query_only(tmp_path):
    with zipfile.ZipFile(code_zip(tmp_path / "job.zip")) as z:
        names = z.namelist()
        sources = {name: z.read(name).decode() for name in names}
    assert SHIPPED_PACKAGES == ("jobs", "detectors", "incidents")
    assert {n.split("/")[0] for n in names} == set(SHIPPED_PACKAGES), sorted(names)[:20]
    assert "jobs/stateful_operator.py" in names and "detectors/cad.py" in names
    # nothing shipped imports what stays behind
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module]
            elif isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            else:
                continue
            for module in imported:
                assert module.split(".")[0] not in ("tools", "evaluation", "tests"), f"{name} imports {module}"


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_bench_and_tests_do_not_import_each_other():
    """bench/ never imports tests/ (the oracles are tests/oracles/, test code); tests/ reaches bench
    scripts' pure helpers only through tests/bench_module.py's load_bench, which loads them by path."""
    bench_files = sorted((REPO / "bench").glob("*.py"))
    test_files = sorted((REPO / "tests").rglob("*.py"))
    assert bench_files and len(test_files) > 20
    for path in bench_files:
        bad = [m for m in _imported_modules(path) if m.split(".")[0] == "tests"]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}: bench/ must not import tests/"
    for path in test_files:
        bad = [m for m in _imported_modules(path) if m.split(".")[0] == "bench"]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}: use tests.bench_module.load_bench"
        if path.name != "bench_module.py":
            assert "spec_from_file_location" not in path.read_text() or path.name == "test_floor_plan.py", (
                f"{path.relative_to(REPO)} loads a file by path: bench scripts go through tests/bench_module.py"
            )
    oracles = {p.name for p in (REPO / "tests" / "oracles").glob("*.py")}
    assert {"windows_oracle.py", "stateful_step_oracle.py", "cad_pure_python.py"} <= oracles


MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED: set[str] = set()


def test_no_function_outside_tests_is_longer_than_80_lines():
    """Every function and method outside tests/ (shipped code, tools, evaluation, bench, scripts), from its
    ``def`` line to its last line, decorators not counted."""
    skip = {"tests", ".venv", ".jars", ".git", "work", "node_modules"}
    files = [p for p in sorted(REPO.rglob("*.py")) if not skip & set(p.relative_to(REPO).parts)]
    assert any(p.parts[-2:] == ("jobs", "stateful_step.py") for p in files)
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(REPO)}::{node.name}"
                if lines > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{where} ({lines} lines, from line {node.lineno})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)
