import subprocess
import sys
import textwrap

import pytest

from fer_bench.method import Method
from fer_bench.registry import METHODS, Registry, UnknownNameError, get_method, load_plugin_file


def test_builtin_methods_come_from_entry_points():
    names = METHODS.names()
    assert "majority" in names and "baseline" in names
    assert get_method("baseline").__module__ == "fer_bench_methods.baseline"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'baseline'"):
        get_method("baselin")


def test_duplicate_name_raises():
    reg = Registry("thing", "fer_bench.no_such_group")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(type("B", (), {}))


def test_plugin_file_registers(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent("""
        from fer_bench.registry import register_method
        from fer_bench_methods.majority import Majority

        @register_method("tiny_majority_plugin")
        class TinyMajority(Majority):
            '''A plugin.'''
    """))
    try:
        load_plugin_file(path)
        load_plugin_file(path)  # loading twice is harmless
        assert issubclass(get_method("tiny_majority_plugin"), Method)
    finally:
        METHODS.unregister("tiny_majority_plugin")


def test_missing_plugin_file_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="--plugin"):
        load_plugin_file(tmp_path / "nope.py")


def test_methods_package_does_not_claim_the_name_methods():
    # The built-in plugin folder installs as fer_bench_methods, never as a top-level 'methods'.
    code = "import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', '.')]; " \
           "print(importlib.util.find_spec('methods') is None, importlib.util.find_spec('fer_bench_methods') is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/").stdout.split()
    assert out == ["True", "True"]
