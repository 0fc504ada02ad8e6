"""Dataset folders and the paths their annotation files name (DESIGN.md section 2).

``data_root`` finds a dataset's folder (``--data-root`` or ``$FER_BENCH_DATA/<name>``). Every path taken
from an annotation file goes through :class:`RootGuard`, which rejects absolute paths, ``..`` and
symlinks that lead outside the dataset root, naming the offending line. ``find_layout`` /
``find_named`` / ``files_below`` find an official layout at or below the root; a folder that does not
hold one is a :class:`DatasetError` naming what was expected and the fix.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator, Sequence

DATA_ENV = "FER_BENCH_DATA"


class DatasetError(ValueError):
    """A dataset folder or file is not what its adapter expects (one line: path, expected, fix)."""


def data_root(root: str | Path | None, dataset: str) -> Path:
    """The folder of a dataset: ``root``, else ``$FER_BENCH_DATA/<dataset>``; a clear error if missing."""
    if root is None:
        base = os.environ.get(DATA_ENV)
        if not base:
            raise FileNotFoundError(f"Dataset {dataset!r} needs its files: pass --data-root PATH or set "
                                    f"{DATA_ENV} to the folder that holds {dataset}/.")
        root = Path(base) / dataset
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} for dataset {dataset!r} is a file, not a folder; "
                                f"pass --data-root to the folder that holds the downloaded dataset.")
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {str(root)!r} for dataset {dataset!r} does not exist; "
                                f"pass --data-root to the folder you downloaded.")
    return root


class RootGuard:
    """Resolves paths named by annotation files and refuses those that leave the dataset root.

    Rejected: absolute paths (``/x``, ``C:\\x``), any ``..`` component, and paths whose real location
    (after following symlinks, in any component) is outside the real root. Each refusal is a
    :class:`DatasetError` naming the line (``where``) that holds the path.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._root = str(root).rstrip(os.sep) or os.sep
        real = os.path.realpath(root)
        self._real, self._real_prefix = real, real.rstrip(os.sep) + os.sep
        self._dirs: dict[str, bool] = {}

    def path(self, rel: str, where: str) -> str:
        """``root/rel`` for a relative path ``rel`` named at ``where``; raises if it escapes.

        Plain strings, not ``pathlib``: this runs once per image of a 290k-image list on every load.
        The file itself is checked (symlink or not) by the stat pass of ``decode_sources``.
        """
        return self.join(self.relative_parts(rel, where), where, str(rel).strip())

    def join(self, parts: Sequence[str], where: str, shown: str) -> str:
        """``root/part/...`` for components already checked by ``relative_parts``; checks the folder."""
        path = os.sep.join([self._root, *parts])
        self.check_dir(path, where, shown)
        return path

    def relative_parts(self, rel: str, where: str) -> list[str]:
        """The components of a path named in an annotation file; raises if absolute or with '..'."""
        text = str(rel).strip()
        if not text:
            raise DatasetError(f"{where}: empty file name; every line must name an image file.")
        if text[0] in "/\\" or (len(text) > 1 and text[1] == ":" and text[0].isalpha()):
            raise self._escape(text, where, "is an absolute path")
        parts = [p for p in text.replace("\\", "/").split("/") if p and p != "."]
        if ".." in parts:
            raise self._escape(text, where, "contains '..'")
        if not parts:
            raise DatasetError(f"{where}: {text!r} names no file; every line must name an image file.")
        return parts

    def check_dir(self, path: str | Path, where: str, shown: str | None = None) -> None:
        """Raise if the folder of ``path`` really lies outside the root (a symlinked folder)."""
        parent = os.path.dirname(str(path))
        inside = self._dirs.get(parent)
        if inside is None:
            inside = self._inside(os.path.realpath(parent))
            self._dirs[parent] = inside
        if not inside:
            raise self._escape(shown or str(path), where, "lies in a folder that links outside the root")

    def check_link(self, path: str | Path, where: str, shown: str | None = None) -> None:
        """Raise if the symlink ``path`` leads outside the root."""
        if not self._inside(os.path.realpath(path)):
            raise self._escape(shown or str(path), where, "is a symlink to a file outside the root")

    def check(self, path: str | Path, where: str, shown: str | None = None) -> str:
        """Folder and file checks of one path (``check_dir``, and ``check_link`` when it is a symlink)."""
        self.check_dir(path, where, shown)
        with contextlib.suppress(OSError):     # missing: reported by the decoder with the other problems
            if stat.S_ISLNK(os.lstat(path).st_mode):
                self.check_link(path, where, shown)
        return str(path)

    def _inside(self, real: str) -> bool:
        return real == self._real or real.startswith(self._real_prefix)

    def _escape(self, text: str, where: str, why: str) -> DatasetError:
        return DatasetError(f"{where}: path {text!r} {why}; paths must stay inside the dataset root "
                            f"{str(self.root)!r}; fix that line or move the file under the root.")


def find_layout(root: Path, sentinels: Sequence[str], dataset: str, expected: str, depth: int = 2,
                want_dir: bool = False) -> tuple[Path, str]:
    """The folder at or up to ``depth`` levels below ``root`` that holds one of ``sentinels``.

    Returns ``(folder, sentinel found)``; sentinels are tried in order at each folder, shallow folders
    first. One sentence naming what was expected when nothing matches, or when two folders match.
    """
    root = Path(root)
    level = [root]
    for _ in range(depth + 1):
        found = []
        for folder in level:
            for sentinel in sentinels:
                target = folder / sentinel
                if target.is_dir() if want_dir else target.is_file():
                    found.append((folder, sentinel))
                    break
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds more than one {dataset} layout "
                               f"({', '.join(str(f / s) for f, s in found[:3])}); point --data-root at one of them.")
        level = [c for f in level for c in _subdirs(f)]
    raise DatasetError(f"{str(root)!r} is not a {dataset} folder: no {' or '.join(sentinels)} in it or up to "
                       f"{depth} levels below; expected {expected}; point --data-root at the folder you downloaded.")


def find_named(root: Path, name: str, dataset: str, depth: int = 2, want_dir: bool = False) -> Path | None:
    """The one file (or folder) called ``name`` at or up to ``depth`` levels below ``root``, else None.

    Shallower matches win; two matches at the same level are an error naming both.
    """
    level = [Path(root)]
    for _ in range(depth + 1):
        found = [f / name for f in level if ((f / name).is_dir() if want_dir else (f / name).is_file())]
        if len(found) > 1:
            raise DatasetError(f"{str(root)!r} holds {name} twice ({found[0]} and {found[1]}); point --data-root at "
                               f"the {dataset} folder you mean.")
        if found:
            return found[0]
        level = [c for f in level for c in _subdirs(f)]
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def files_below(root: Path, levels: int = 3) -> Iterator[Path]:
    """Files in ``root`` and up to ``levels - 1`` folders below it, sorted by name within each folder,
    hidden entries skipped, folder symlinks not followed (lab datasets ship loose or one folder deep)."""
    level = [root]
    for _ in range(levels):
        below = []
        for folder in level:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                else:
                    yield Path(entry.path)
        level = below


def relative_key(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` in POSIX form (for keys and messages)."""
    return Path(os.path.relpath(path, root)).as_posix()


def read_text_lines(path: Path, shown: str) -> list[tuple[int, str]]:
    """Non-empty stripped lines of a text annotation file with their 1-based numbers (any line ending)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{shown}: cannot be read ({exc.strerror}); restore the file from the download.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
