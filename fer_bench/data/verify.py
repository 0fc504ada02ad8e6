"""``fer-bench datasets verify NAME --data-root PATH``: is a downloaded dataset what its adapter expects?

The report checks the layout (every split's annotation files parse, every path stays inside the
root), prints per-split and per-class counts beside the dataset card's expected counts, decodes the
images into the cache (so the first real run starts at once; ``--quick`` only checks that the files
exist), gives each split's fingerprint, and lists the first problems found, each with its fix.
Counts that differ from the card are reported but are not failures (subsets, re-packagings and test
fixtures differ) unless ``--strict``.

``datasets_group`` is the click group the CLI adds: ``main.add_command(datasets_group)``.
"""
from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from fer_bench import labels as L
from fer_bench.data.adapter import FileAdapter, load_dataset, parse_dataset_spec
from fer_bench.data.decode import SplitIndex, problem_message, stat_sources
from fer_bench.data.paths import DatasetError, data_root
from fer_bench.params import ParameterError
from fer_bench.registry import UnknownNameError, get_dataset

MAX_PROBLEMS = 10


def verify(name: str, root: str | Path | None, options: dict[str, Any] | None = None, decode: bool = True,
           strict: bool = False) -> tuple[bool, str]:
    """Check dataset ``name`` at ``root``; returns (ok, the report text).

    Unknown names, options or a missing root raise (usage errors); everything about the files is
    reported in the text.
    """
    adapter_cls = get_dataset(name)
    resolved = adapter_cls.resolve_options(dict(options or {}))
    adapter = adapter_cls()
    card = adapter_cls.card().splitlines()
    lines = [f"fer-bench datasets verify {name}", f"  card:    {card[0] if card else '(no card)'}"]
    problems: list[str] = []
    notes: list[str] = []
    if not isinstance(adapter, FileAdapter):
        return _verify_generic(adapter_cls, name, root, resolved, lines)
    path = data_root(root, adapter.data_dir or name)
    lines.append(f"  root:    {path}")
    given = {k: v for k, v in resolved.items() if v != adapter_cls.options.get(k)}
    lines.append(f"  options: {', '.join(f'{k}={v}' for k, v in sorted(given.items())) or '(defaults)'}")
    try:
        adapter.check_common(resolved)
        splits = adapter.available_splits(path, **resolved)
    except (DatasetError, ValueError) as exc:
        problems.append(str(exc))
        splits = ()
    absent = [s for s in adapter_cls.splits if s not in splits]
    if splits and absent:
        notes.append(f"this layout has no {', '.join(absent)} split(s)")

    header_ids: tuple[int, ...] = ()
    rows: list[tuple[str, list[str]]] = []
    fingerprints: list[str] = []
    layouts: set[str] = set()
    for split in splits:
        try:
            idx = adapter.index(split, path, **resolved)
        except (DatasetError, ValueError) as exc:
            problems.append(f"{split}: {exc}")
            continue
        layouts.add(str(idx.meta.get("layout", "")))
        header_ids = header_ids or idx.classes
        counts = idx.class_counts()
        rows.append((split, [f"{len(idx):,}"] + [f"{counts.get(c, 0):,}" for c in header_ids]))
        exp = adapter.expected_for(split, resolved, idx.meta)
        if exp is not None:
            per = exp.get("classes") or {}
            rows.append(("  card", [f"{exp['total']:,}" if exp.get("total") is not None else "?"] +
                         [f"{per[c]:,}" if c in per else "-" for c in header_ids]))
            differs = (exp.get("total") is not None and exp["total"] != len(idx)) or \
                any(counts.get(c, 0) != n for c, n in per.items())
            if differs:
                text = f"{split}: counts differ from the card ({exp.get('source', 'card')})"
                (problems if strict else notes).append(
                    text + ("; --strict makes this a failure" if not strict else
                            "; check that this is the complete, original download"))
        face_line, fp = _images(adapter, name, split, idx, resolved, decode, problems, path)
        fingerprints.append(f"    {split:<6} {fp}")
        if face_line:
            notes.append(f"{split}: {face_line}")
        for key in ("invalid_box_rows", "dropped_codes", "rows_without_name", "duplicate_names_dropped",
                    "n_unmatched_image_files", "peak_frame_not_last_png", "empty_emotion_dirs"):
            if idx.meta.get(key):
                notes.append(f"{split}: {key.replace('_', ' ')}: {idx.meta[key]}")
        if idx.meta.get("vote_source"):
            notes.append(f"{split}: votes from {idx.meta['vote_source']}, images from {idx.meta.get('image_source')}")
    try:
        notes.extend(adapter.notes(path, **resolved) if splits else [])
    except (DatasetError, ValueError, OSError) as exc:
        problems.append(str(exc))

    if layouts:
        lines.append(f"  layout:  {'; '.join(sorted(layouts))}")
    if rows:
        names = L.names(header_ids, "short")
        width = max(8, *(len(v) for _, vals in rows for v in vals))
        lines.append("")
        lines.append(f"  {'split':<8}" + "".join(f"{h:>{width}}" for h in ["images", *names]))
        for label, vals in rows:
            lines.append(f"  {label:<8}" + "".join(f"{v:>{width}}" for v in vals))
    if fingerprints:
        lines += ["", "  fingerprints:", *fingerprints]
    if notes:
        lines += ["", "  notes:"] + [f"    - {n}" for n in notes]
    lines.append("")
    if problems:
        shown = problems[:MAX_PROBLEMS]
        first = f", first {MAX_PROBLEMS}" if len(problems) > MAX_PROBLEMS else ""
        lines.append(f"  problems ({len(problems)}{first}):")
        lines += [f"    {i}. {p}" for i, p in enumerate(shown, start=1)]
        lines.append(f"  RESULT: FAILED ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
    else:
        lines.append("  problems: none")
        lines.append("  RESULT: OK")
    return not problems, "\n".join(lines)


def _images(adapter: FileAdapter, name: str, split: str, idx: SplitIndex, options: dict[str, Any],
            decode: bool, problems: list[str], path: Path) -> tuple[str, str]:
    """Check one split's images; returns (face-crop note, fingerprint text) and appends problems."""
    if not decode:
        present, _ = stat_sources(idx.sources, idx.guard)
        missing = [{"key": s.key, "where": s.where, "problem": "missing"}
                   for s, ok in zip(idx.sources, present) if not ok]
        if missing and not options["allow_missing"]:
            problems.append(problem_message(name, split, len(idx), missing, len(missing), 0))
        return "", f"not computed (--quick: {int(present.sum())} of {len(idx)} files present, none decoded)"
    try:
        ds = adapter.materialize(split, path, idx, options, allow_missing=True)
    except (DatasetError, ValueError, ImportError) as exc:
        problems.append(f"{split}: {exc}")
        return "", "not computed (decoding failed)"
    bad = ds.meta["missing"] + ds.meta["unreadable"]
    if bad and not options["allow_missing"]:
        problems.append(problem_message(name, split, len(idx), bad, ds.meta["n_missing"], ds.meta["n_unreadable"]))
    face = ds.meta.get("face_crop") or {}
    note = ""
    if face:
        counts = face.get("counts", {})
        note = (f"Haar face crop: face and eyes {counts.get('ok', 0)}, face without eyes {counts.get('no_eyes', 0)}, "
                f"no face {counts.get('no_face', 0)} (centred square used)")
    dropped = f", {ds.meta['images_dropped']} dropped" if ds.meta["images_dropped"] else ""
    return note, f"{ds.fingerprint}  ({len(ds)} images at {ds.images.shape[1]} px{dropped})"


def _verify_generic(adapter_cls: Any, name: str, root: str | Path | None, options: dict[str, Any],
                    lines: list[str]) -> tuple[bool, str]:
    """Datasets that do not read files (e.g. synthetic): load each split and print its counts."""
    for split in adapter_cls.splits:
        ds = load_dataset(name, split, root, **options)
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        lines.append(f"  {split:<6} {len(ds):>7,} images  " +
                     " ".join(f"{n}={c}" for n, c in zip(L.names(ds.classes, 'short'), counts)) +
                     f"  fingerprint {ds.fingerprint}")
    lines += ["  problems: none", "  RESULT: OK"]
    return True, "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def _usage_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad names, options or paths: one line on stderr and exit code 2 (the CLI's convention)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UnknownNameError, ParameterError, ValueError, FileNotFoundError) as exc:
            click.echo(f"fer-bench: error: {exc}", err=True)
            sys.exit(2)
    return wrapper


@click.group("datasets")
def datasets_group() -> None:
    """Check downloaded datasets and read their cards."""


@datasets_group.command("verify")
@click.argument("name")
@click.option("--data-root", type=click.Path(), default=None, help="Folder of the downloaded dataset (or $FER_BENCH_DATA).")
@click.option("--option", "options", default="", help="Dataset options, e.g. classes=7,variant=original.")
@click.option("--quick", is_flag=True, help="Check the layout and that the files exist; decode nothing.")
@click.option("--strict", is_flag=True, help="Counts that differ from the dataset card are failures.")
@_usage_errors
def verify_cmd(name: str, data_root: str | None, options: str, quick: bool, strict: bool) -> None:
    """Check the layout, counts, fingerprints and images of dataset NAME (exit 1 when a problem is found)."""
    _, opts = parse_dataset_spec(f"{name}:{options}")
    ok, text = verify(name, data_root, opts, decode=not quick, strict=strict)
    click.echo(text)
    sys.exit(0 if ok else 1)


@datasets_group.command("card")
@click.argument("name")
@_usage_errors
def card_cmd(name: str) -> None:
    """Print the dataset card of NAME (source, licence, layout, splits, classes, counts, protocol)."""
    cls = get_dataset(name)
    click.echo(inspect.cleandoc(cls.__doc__ or "") or cls.card())
    click.echo("\nOptions (defaults): " + ", ".join(f"{k}={v!r}" for k, v in cls.options.items()))
