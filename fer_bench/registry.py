"""Method and dataset registries.

A registry is a plain dict filled on import (the timm habit). Three ways in, all ending in the same
``register`` call:

- ``@register_method("name")`` / ``@register_dataset("name")`` in any imported module;
- the entry-point groups ``fer_bench.methods`` / ``fer_bench.datasets`` of any installed distribution
  (fer-bench's own built-in methods are registered exactly this way, see setup.cfg);
- ``load_plugin_file("path.py")`` (the CLI's ``--plugin path.py``) for a single file.

Registering a second, different object under a taken name raises; an unknown name raises with a
"did you mean" suggestion.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import sys
import tempfile
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown method or dataset name (a usage error: the CLI exits with code 2)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the sentence as is
        return str(self.args[0])


class Registry:
    """Name -> object table for one kind of plugin, filled by decorators and entry points."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, Any] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")``."""
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string of letters, digits, '-' or '_'.")

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, obj: Any) -> None:
        old = self._items.get(name)
        if old is not None and old is not obj and not _same_definition(old, obj):
            raise ValueError(f"{self.kind} name {name!r} is already registered by {_where(old)}; "
                             f"{_where(obj)} must use another name.")
        if hasattr(obj, "__dict__") and isinstance(obj, type):
            obj.registered_name = name
        self._items[name] = obj

    def load_entry_points(self) -> None:
        """Import every module advertised under this registry's entry-point group (once)."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                log.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._items:
                self._add(ep.name, obj)

    def get(self, name: str) -> Any:
        self.load_entry_points()
        if name not in self._items:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))
        return self._items[name]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        """Remove a name (for tests that register throwaway plugins)."""
        self._items.pop(name, None)


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One sentence: what was unknown, the closest names, and everything that is allowed."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known) or '(none)'}."


def _same_definition(a: Any, b: Any) -> bool:
    # The same class defined again by re-importing its module (e.g. a plugin file loaded twice).
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


METHODS = Registry("method", "fer_bench.methods")
DATASETS = Registry("dataset", "fer_bench.datasets")


def register_method(name: str) -> Callable[[T], T]:
    """Register a :class:`fer_bench.method.Method` subclass under ``name``."""
    return METHODS.register(name)


def register_dataset(name: str) -> Callable[[T], T]:
    """Register a :class:`fer_bench.data.DatasetAdapter` subclass under ``name``."""
    return DATASETS.register(name)


def get_method(name: str) -> Any:
    return METHODS.get(name)


def get_dataset(name: str) -> Any:
    """The adapter class registered as ``name`` (the built-in ones register when ``fer_bench.data`` is imported)."""
    return DATASETS.get(name)


def load_plugin_file(path: str | Path) -> None:
    """Import one Python file so that its ``@register_method`` / ``@register_dataset`` run."""
    path = Path(path).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(f"plugin file {str(path)!r} does not exist or is not a .py file; "
                                f"pass --plugin path/to/my_method.py.")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    module_name = f"fer_bench_plugin_{path.stem}_{digest}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin {path}{_line_in(exc, path)} failed to load: {type(exc).__name__}: "
                          f"{getattr(exc, 'msg', None) or exc}; fix the file or drop --plugin {path.name}.") from exc


class PluginError(ImportError):
    """A ``--plugin`` file that does not import (a syntax error, or an exception at import time)."""


def _line_in(exc: BaseException, path: Path) -> str:
    """``:LINE``, the line of ``path`` where ``exc`` was raised (or the offending line of a syntax error)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f":{exc.lineno}"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename) == path]
    return f":{lines[-1]}" if lines else ""


def load_plugin_sources(plugins: list[tuple[str, str]]) -> None:
    """Register ``--plugin`` files shipped as (path, source) pairs to a worker process or node: from the path
    when it holds the same source, else from a copy of the source in the temporary folder."""
    for path, source in plugins:
        if Path(path).is_file() and Path(path).read_text() == source:
            load_plugin_file(path)
            continue
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        copy = Path(tempfile.gettempdir()) / "fer_bench_plugins" / digest / Path(path).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(source)
        load_plugin_file(copy)


def plugin_sources(paths: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(absolute path, source) of each ``--plugin`` file, for executors that run cells in other processes."""
    return [(str(Path(p).expanduser().resolve()), Path(p).expanduser().read_text()) for p in paths]
