"""Looking at the synthetic dataset: an ImageFolder export with its factor table, and a contact sheet."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fer_bench import labels as L
from fer_bench.data.synthetic.factors import (SPLIT_CODES, SPLITS, VARIANTS, check_options, factors_frame,
                                              sample_factors)
from fer_bench.data.synthetic.splits import render_images

log = logging.getLogger(__name__)


def _first_per_class(split: str, per_class: int, blended: bool = True, **options: Any) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class in ``split`` (in index order)."""
    opts = check_options(options)
    n, C = opts[f"n_{split}"], len(L.resolve_classes(opts["classes"]))
    picked: list[list[int]] = [[] for _ in range(C)]
    for start in range(0, n, 4096):
        F = sample_factors(split, np.arange(start, min(start + 4096, n)), **opts)
        keep = np.ones(len(F["index"]), bool) if blended else F["partner"] < 0
        for i, c, k in zip(F["index"], F["label"], keep):
            if k and len(picked[c]) < per_class:
                picked[c].append(int(i))
        if all(len(p) >= per_class for p in picked):
            break
    return np.array(sorted(i for p in picked for i in p), dtype=np.int64)


def contact_sheet(path: str | Path, split: str = "train", columns: int = 10, zoom: int = 0,
                  **options: Any) -> Path:
    """A PNG grid: one row per emotion, ``columns`` unblended examples sorted by intensity (weak to strong).

    Each cell shows a dataset image (different identities, poses and lighting) upscaled ``zoom``
    times (0: to about 128 px) with its intensity and variant below.
    """
    from PIL import Image, ImageDraw, ImageFont
    opts = check_options(options)
    index = _first_per_class(split, columns, blended=False, **opts)
    F = sample_factors(split, index, **opts)
    images = render_images(split, index, **opts)
    size = opts["size"]
    zoom = zoom or max(1, round(128 / size))
    cell, label_w, caption = size * zoom, 90, 14
    classes = L.resolve_classes(opts["classes"])
    sheet = Image.new("RGB", (label_w + columns * (cell + 4), len(classes) * (cell + caption + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, c in enumerate(range(len(classes))):
        rows = np.flatnonzero(F["label"] == c)
        rows = rows[np.argsort(F["intensity"][rows], kind="stable")]
        y = 4 + row * (cell + caption + 6)
        draw.text((6, y + cell // 2 - 6), L.DISPLAY[classes[c]], fill="black", font=font)
        for col, r in enumerate(rows[:columns]):
            x = label_w + col * (cell + 4)
            sheet.paste(Image.fromarray(images[r]).resize((cell, cell), Image.NEAREST), (x, y))
            name = VARIANTS[int(F["emotion"][r])][int(F["variant"][r])][0]
            draw.text((x, y + cell + 1), f"{F['intensity'][r]:.2f} {name}"[: max(4, cell // 6)], fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def export(out_dir: str | Path, n_per_class: int = 20, splits: Sequence[str] = SPLITS, sheet_columns: int = 10,
           **options: Any) -> dict[str, Any]:
    """Write an ImageFolder tree, a factor table and a contact sheet of the synthetic dataset.

    ``out_dir/<split>/<emotion>/<index>.png`` for the first ``n_per_class`` images of each class of
    each split (their dataset indices), ``out_dir/factors.csv`` (one row per exported image: split,
    path and every factor) and ``out_dir/contact_sheet.png`` (see ``contact_sheet``). Returns the
    paths and counts.
    """
    from PIL import Image
    import pandas as pd
    opts = check_options(options)
    out = Path(out_dir)
    classes = L.resolve_classes(opts["classes"])
    tables, counts = [], {}
    for split in splits:
        if split not in SPLIT_CODES:
            raise ValueError(f"Dataset 'synthetic' has no split {split!r}; it has {', '.join(SPLITS)}.")
        index = _first_per_class(split, n_per_class, **opts)
        F = sample_factors(split, index, **opts)
        images = render_images(split, index, **opts)
        paths = []
        for img, i, c in zip(images, index, F["label"]):
            p = out / split / L.NAMES[classes[c]] / f"{i:06d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(p)
            paths.append(str(p.relative_to(out)))
        table = factors_frame(F)
        table.insert(0, "path", paths)
        table.insert(0, "split", split)
        tables.append(table)
        counts[split] = {L.NAMES[classes[c]]: int((F["label"] == c).sum()) for c in range(len(classes))}
    csv_path = out / "factors.csv"
    pd.concat(tables, ignore_index=True).to_csv(csv_path, index=False, quoting=csv.QUOTE_MINIMAL)
    sheet = contact_sheet(out / "contact_sheet.png", columns=sheet_columns, **opts)
    log.info("exported %s images to %s", sum(sum(c.values()) for c in counts.values()), out)
    return {"out_dir": str(out), "factors": str(csv_path), "contact_sheet": str(sheet), "counts": counts}
