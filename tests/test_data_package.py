"""The data package's registration: importing ``fer_bench.data`` registers every built-in dataset adapter."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "fer_bench" / "data"


def _declared() -> dict[str, str]:
    """Dataset name -> file, for every ``register_dataset("name")`` call in the package's source."""
    names = {}
    for path in DATA.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_dataset" and node.args:
                names[node.args[0].value] = str(path.relative_to(DATA))
    return names


def test_importing_fer_bench_data_registers_every_builtin_adapter():
    """A new adapter module that ``fer_bench/data/__init__.py`` does not import would be missing here."""
    declared = _declared()
    assert {"synthetic", "rafdb", "fer2013", "ferplus", "affectnet7", "affectnet8", "ckplus", "jaffe", "nimstim",
            "folder"} <= set(declared)
    code = "import json, fer_bench.data, fer_bench.registry as r; print(json.dumps(r.DATASETS.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # a fresh import
    registered = set(json.loads(out.stdout.strip().splitlines()[-1]))
    missing = {name: file for name, file in declared.items() if name not in registered}
    assert missing == {}, f"not imported by fer_bench/data/__init__.py: {missing}"
