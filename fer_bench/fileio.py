"""Atomic file writes: a reader (another process, a resumed run) sees the old file or the new one, never half.

Every file fer-bench writes that something may read back (checkpoints, saved methods, tables, figures, the
dataset cache, clustering caches) goes through :func:`atomic_path`: the writer fills a temporary file in the
target's folder (unique to this process and call, with the target's suffix so that writers which infer a format
from the name, such as ``np.save`` or matplotlib, behave the same), which then replaces the target with
``os.replace``; on an error the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit move it onto ``target`` (``fsync``: flush
    the file to disk first, for data that must survive a power cut, such as the dataset cache)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` to ``target`` atomically in UTF-8 (tables hold "±" and "—"; see :func:`atomic_path`)."""
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
