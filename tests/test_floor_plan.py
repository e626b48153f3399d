"""The floor plan holds: the query ships alone, and the tools and evaluation run without Spark."""

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
