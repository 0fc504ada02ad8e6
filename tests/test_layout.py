"""The package's shape (issue #20): every package installed, method files small."""
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for base, name in ((ROOT / "fer_bench", "fer_bench"), (ROOT / "methods", "fer_bench_methods")):
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((name, *rel)))
    return found


def test_setup_cfg_lists_every_package_so_a_regular_install_has_them_all():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    assert listed == _packages_on_disk()


def test_every_method_main_file_is_under_350_lines():
    mains = [*ROOT.glob("methods/*.py"), *ROOT.glob("methods/*/__init__.py")]
    long = {str(p.relative_to(ROOT)): n for p in mains if (n := len(p.read_text().splitlines())) >= 350}
    assert long == {}


def _module_name(path: Path) -> str:
    base, package = (ROOT / "methods", "fer_bench_methods") if ROOT / "methods" in path.parents else \
        (ROOT / "fer_bench", "fer_bench")
    parts = [package, *path.relative_to(base).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_registered_builtin_method_has_its_entry_point():
    import ast
    registered = {}
    for path in (ROOT / "methods").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            for deco in getattr(node, "decorator_list", []):
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "register_method":
                    registered[deco.args[0].value] = f"{_module_name(path)}:{node.name}"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    points = {k.strip(): v.strip() for k, v in cfg["options.entry_points"].items() if k == "fer_bench.methods"}
    listed = dict(line.split(" = ") for line in points["fer_bench.methods"].splitlines() if " = " in line)
    assert listed == registered


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in the file but under ``if TYPE_CHECKING:``)."""
    import ast
    files = {_module_name(p): p for base in (ROOT / "fer_bench", ROOT / "methods") for p in base.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree, out, stack = ast.parse(path.read_text()), set(), []
        stack.append(tree)
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                    stack.extend(child.orelse)
                else:
                    stack.append(child)
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (name.split(".") if path.name == "__init__.py" else name.split(".")[:-1])
                module = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                targets = [module, *(f"{module}.{a.name}" for a in node.names)]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.add(target)
        graph[name] = out
    return graph


def test_no_import_cycles():
    graph = _import_graph()
    cycles = []
    for start in graph:                                   # a depth-first search from every module
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_no_file_of_the_package_or_the_methods_is_over_700_lines():
    files = [*ROOT.glob("fer_bench/**/*.py"), *ROOT.glob("methods/**/*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 700}
    assert long == {}
