"""Face cropping for the lab datasets whose images are not pre-aligned (CK+, JAFFE, NimStim).

Detection uses the Haar cascades that OpenCV 4 ships (``haarcascade_frontalface_default.xml`` for
the face, ``haarcascade_eye.xml`` for the eyes; optional extra ``pip install fer-bench[align]``):
the largest frontal face is kept, the image is turned about the face centre so that the line through
the two eyes is level (when both eyes are found, within 30 degrees), and a square of the face size
plus ``margin`` on each side is cut out. Frontal, evenly lit lab portraits are what these cascades
handle well; web images (AffectNet, RAF-DB originals) are cropped by their own boxes instead.

When no face is found the centred square of the whole image is used, and the image is counted
(``FERDataset.meta["face_crop"]``, the verify report): a test image is never silently dropped.
A user who has better boxes (another detector, manual) passes them as a CSV instead (crop=boxes),
read by :func:`read_boxes_csv`.

Pre-aligned datasets (RAF-DB aligned, FER2013 / FERPlus, AffectNet) are only resized.
"""
from __future__ import annotations

import csv
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fer_bench.data.paths import DatasetError, RootGuard

DETECT_MAX_SIDE = 480          # detection runs on a copy at most this large (speed); boxes are scaled back
MAX_EYE_ANGLE = 30.0           # a steeper eye line is taken as a false eye pair: no rotation
INSTALL_HINT = "pip install fer-bench[align]"


class MissingExtraError(DatasetError, ImportError):
    """OpenCV (the optional extra ``[align]``) is needed and missing: a usage error, one line."""


def require_cv2(what: str = "face cropping") -> Any:
    """The ``cv2`` module with Haar cascades, or a one-line error naming the extra to install."""
    try:
        import cv2
    except ImportError:
        raise MissingExtraError(f"{what} needs OpenCV 4 (Haar cascades): {INSTALL_HINT} "
                          f"(or choose crop=center / crop=none / crop=boxes).") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise MissingExtraError(f"{what} needs OpenCV 4 with Haar cascades; the installed cv2 {cv2.__version__} has none "
                          f"(OpenCV 5 dropped them): pip install 'opencv-python-headless<5' or {INSTALL_HINT}.")
    return cv2


def square_box(box: tuple[float, float, float, float], margin: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the square centred on box (x, y, w, h), side max(w, h) * (1 + 2 margin)."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    return cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0


def eye_angle(left: tuple[float, float], right: tuple[float, float]) -> float:
    """Degrees by which to turn the image counter-clockwise (PIL's ``rotate``) to level the eyes.

    ``left`` is the eye on the image's left. Image y grows downwards, so a right eye lower than the
    left one (a clockwise tilt on screen) gives a positive angle.
    """
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def level_and_crop(img: Image.Image, box: tuple[float, float, float, float], margin: float,
                   angle: float = 0.0) -> Image.Image:
    """Turn ``img`` by ``angle`` degrees about the centre of ``box``, then cut the square around it."""
    x, y, w, h = box
    if angle:
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, center=(x + w / 2.0, y + h / 2.0))
    return img.crop(tuple(int(round(v)) for v in square_box(box, margin)))  # outside the image: black


class HaarCropper:
    """``cropper(rgb_image) -> (square face image, status)``; status is 'ok', 'no_eyes' or 'no_face'.

    Thread-safe: each thread loads its own cascades (OpenCV's classifiers are not shared safely).
    """

    def __init__(self, margin: float = 0.1, rotate: bool = True):
        self.cv2 = require_cv2()
        self.margin = margin
        self.rotate = rotate
        self._local = threading.local()

    def _cascades(self) -> tuple[Any, Any]:
        if not hasattr(self._local, "face"):
            base = Path(self.cv2.data.haarcascades)
            self._local.face = self.cv2.CascadeClassifier(str(base / "haarcascade_frontalface_default.xml"))
            self._local.eye = self.cv2.CascadeClassifier(str(base / "haarcascade_eye.xml"))
            if self._local.face.empty() or self._local.eye.empty():
                raise MissingExtraError(f"the Haar cascade files under {str(base)!r} cannot be loaded; "
                                        f"reinstall with {INSTALL_HINT}.")
        return self._local.face, self._local.eye

    def detect(self, gray: np.ndarray) -> tuple[tuple[float, float, float, float] | None,
                                                tuple[tuple[float, float], tuple[float, float]] | None]:
        """(face box (x, y, w, h), (left eye, right eye) centres or None) in ``gray`` (H, W) uint8."""
        cv2 = self.cv2
        face_cc, eye_cc = self._cascades()
        H, W = gray.shape
        f = min(1.0, DETECT_MAX_SIDE / max(H, W))
        small = gray
        if f < 1:
            small = cv2.resize(gray, (max(1, round(W * f)), max(1, round(H * f))), interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)
        min_side = max(20, min(small.shape) // 8)
        faces = face_cc.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(faces) == 0:
            return None, None
        x, y, w, h = max((tuple(map(int, b)) for b in faces), key=lambda b: b[2] * b[3])
        roi = small[y:y + int(h * 0.6), x:x + w]
        eyes = eye_cc.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(max(5, w // 10),) * 2)
        pair = None
        centres = [(x + ex + ew / 2.0, y + ey + eh / 2.0, ew * eh) for ex, ey, ew, eh in eyes]
        left = [c for c in centres if c[0] < x + w / 2.0]
        right = [c for c in centres if c[0] >= x + w / 2.0]
        if left and right:
            lx, ly, _ = max(left, key=lambda c: c[2])
            rx, ry, _ = max(right, key=lambda c: c[2])
            pair = ((lx / f, ly / f), (rx / f, ry / f))
        return (x / f, y / f, w / f, h / f), pair

    def __call__(self, img: Image.Image) -> tuple[Image.Image, str]:
        rgb = img.convert("RGB")
        box, eyes = self.detect(np.asarray(rgb.convert("L")))
        if box is None:
            W, H = rgb.size
            side = min(W, H)
            return rgb.crop(((W - side) // 2, (H - side) // 2, (W - side) // 2 + side, (H - side) // 2 + side)), "no_face"
        angle = eye_angle(*eyes) if eyes is not None else 0.0
        if eyes is None or abs(angle) > MAX_EYE_ANGLE:
            return level_and_crop(rgb, box, self.margin), "no_eyes"
        return level_and_crop(rgb, box, self.margin, angle if self.rotate else 0.0), "ok"


def read_boxes_csv(path: Path, guard: RootGuard) -> dict[str, tuple[float, float, float, float]]:
    """``file -> (x, y, w, h)`` from a CSV with the header ``file,x,y,w,h``.

    ``file`` is relative to the dataset root (the same path the dataset names, e.g.
    ``cohn-kanade-images/S005/001/S005_001_00000011.png``) and is confined to the root.
    """
    if not path.is_file():
        raise DatasetError(f"boxes file {str(path)!r} does not exist; pass boxes=PATH to a CSV with the header "
                           f"file,x,y,w,h.")
    boxes: dict[str, tuple[float, float, float, float]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if header != ["file", "x", "y", "w", "h"]:
            raise DatasetError(f"{str(path)!r} line 1: header {header}, expected file,x,y,w,h; fix the header.")
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            where = f"{path.name} line {line}"
            if len(row) != 5:
                raise DatasetError(f"{where}: {len(row)} fields, expected 5 (file,x,y,w,h); fix that line.")
            rel = guard.path(row[0], where)
            try:
                x, y, w, h = (float(v) for v in row[1:])
            except ValueError:
                raise DatasetError(f"{where}: x,y,w,h must be numbers, got {row[1:]}; fix that line.") from None
            if w <= 0 or h <= 0:
                raise DatasetError(f"{where}: box width and height must be positive, got {w:g}x{h:g}; fix that line.")
            boxes[Path(rel).relative_to(guard.root).as_posix()] = (x, y, w, h)
    return boxes
