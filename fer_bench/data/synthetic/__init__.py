"""``synthetic``: rendered faces whose generative factors are all known (card: ``fer_bench/data/synthetic.md``).

Real FER datasets cannot tell whether a method recovered the true label distribution, found the true
sub-classes, ignored nuisance features or learned the true similarity structure; this one can,
because every image is drawn from factors that are kept. It needs no download.

Generative model (one image; every factor is a column of ``FERDataset.factors``)
---------------------------------------------------------------------------------
1. Identity. Image ``i`` of a split belongs to person ``i // per_identity`` of that split; persons of
   different splits are different (``groups`` = global identity id). A person fixes face width and
   length, jaw taper, skin tone (a palette from light to dark brown), eye spacing / size / height /
   tilt, iris colour, brow thickness / height / arch, nose size and length, mouth size, lip
   thickness and tone, hair style (buzz, short, voluminous, long), hair colour, fringe and beard.
2. Expression. The class ``c`` is drawn from the prior (RAF-DB basic proportions or uniform), then a
   variant ``v`` of that emotion (2-3 per emotion, ``VARIANTS``), then an intensity ``a`` in
   ``[intensity_min, intensity_max]``. With probability ``ambiguity`` a second emotion ``c2`` (drawn
   from ``BLEND_AFFINITY``) is blended in with weight ``w`` in ``[blend_min, blend_max]``. The FACS
   action-unit vector is ``a * ((1 - w) * P[c, v] + w * P[c2, v2])``, each unit jittered by
   ``+-au_jitter`` (relative) plus an idle activation in ``[0, au_noise]``; units are per side of the
   face, so contempt's AU12 + AU14 are one-sided. ``label_dist`` is ``(1 - w)`` on ``c`` and ``w`` on
   ``c2``, mixed with a uniform floor: ``p * (1 - C * label_floor) + label_floor``.
3. Geometry (``geometry.py``). Action units move the face: AU1 / AU2 raise the inner / outer brow,
   AU4 lowers and knits the brows (vertical glabella lines), AU5 widens and AU7 narrows the eye
   opening, AU6 raises cheeks and lower lids (crow's feet), AU9 wrinkles the nose and lifts the
   nostrils, AU10 raises the upper lip, AU12 pulls lip corners up and out, AU14 dimples, AU15 pulls
   corners down, AU16 lowers the lower lip, AU17 pushes it up, AU20 stretches the lips sideways,
   AU23 / AU24 tighten / press them, AU25 parts the lips, AU26 drops the jaw, AU27 stretches the
   mouth open; nasolabial folds deepen with AU6 / AU9 / AU10 / AU12.
4. Nuisances (the "redundant" factors; each range is multiplied by ``nuisance``): glasses, beard,
   fringe, in-plane rotation, scale, translation, simulated yaw (features shift sideways by their
   depth), gaze, a linear illumination gradient, brightness / contrast / white balance, background
   (plain, blotchy or striped, one of 8 tints), a hand-like occluder (probability ``occlusion``),
   blur and sensor noise. ``spurious > 0`` makes ``spurious_factor`` (glasses or the background
   tint) follow the class in the train split only (see ``factors._spurious``); val and test stay
   unbiased.
5. Rendering (``renderer.py``, drawing with ``canvas.py``). Shapes are implicit functions (ellipses,
   bands between curves, capsules) evaluated by numpy over a batch of faces, each part inside a pixel
   box per image.
   Coverage is the signed distance in pixels over the edge width (1 + 2 x defocus sigma) clipped to
   ``[0, 1]``: analytic anti-aliasing, exact for straight edges, and defocus widens every edge
   instead of blurring the image. ``supersample=k`` also renders at ``k`` times the size and
   box-reduces. Parts are composited back to front (paints, and multiplicative marks for wrinkles,
   lid lines and shading), then lighting, sensor noise and rounding to uint8.

Determinism: every random factor of image ``i`` is a counter-based hash of
``(seed, stream, split, i, factor name)`` (SplitMix64; ``factors._Stream``), so an image is a pure function of
``(seed, split, i, options)``: it can be regenerated alone, any batch or thread gives the same bytes,
and there is no global RNG. (We do not build ``np.random.default_rng([seed, split, i])`` per
image because constructing one costs ~60-100 us here, a fifth of the per-image budget; the hash is
the same idea, vectorised.) Pixel arithmetic uses only +, -, *, /, sqrt, abs, floor, min / max and
clip, which IEEE 754 rounds identically whatever the batch shape (and whatever numpy's ufunc buffer
size, which ``render`` lowers while it draws); sines and cosines are taken per image in Python. The
bytes of a few batches are pinned by sha256 in the tests (``test_rendered_bytes_are_pinned``).

The adapter caches the rendered images with :func:`fer_bench.data.cache.cached_images` (keyed by the
fingerprint: generator version, split and options); labels, ``label_dist``, ``groups`` and factors are
recomputed on load (about 10 us per image), which keeps the cache entry a plain image array.

Modules: ``factors`` (the model, the options, ``sample_factors``, the fingerprint), ``geometry`` (action
units -> face shape), ``canvas`` (shape primitives and the face -> pixel mapping), ``face`` (the parts the
action units shape), ``renderer`` (``render``), ``splits`` (rendering whole splits, on a few threads),
``adapter`` (the registered dataset, ``pretraining_faces``) and ``export`` (an ImageFolder and a contact
sheet). The names below are the package's public interface.
"""
from fer_bench.data.synthetic.adapter import PretrainFaces, SyntheticFER, pretraining_faces
from fer_bench.data.synthetic.export import contact_sheet, export
from fer_bench.data.synthetic.factors import (AU_INDEX, AU_NAMES, AUS, BLEND_AFFINITY, CONTEMPT_SHARE,
                                              GENERATOR_VERSION, IDENTITY_STRIDE, MAX_IMAGES, OPTIONS, PRETRAIN_CODE,
                                              PRETRAIN_SPLIT, PROTOTYPES, RAFDB_TRAIN_COUNTS, SPLIT_CODES, SPLITS,
                                              VARIANTS, check_options, class_prior, factors_frame, fingerprint,
                                              label_distribution, sample_factors, spurious_target)
from fer_bench.data.synthetic.geometry import FACE_SCALE
from fer_bench.data.synthetic.renderer import render
from fer_bench.data.synthetic.splits import (BATCH_PIXELS, CHUNK, MAX_THREADS, PARALLEL_MIN, batch_size, iter_split,
                                             render_images, render_split, resolve_workers)

__all__ = [
    "AUS", "AU_INDEX", "AU_NAMES", "BATCH_PIXELS", "BLEND_AFFINITY", "CHUNK", "CONTEMPT_SHARE", "FACE_SCALE",
    "GENERATOR_VERSION", "IDENTITY_STRIDE", "MAX_IMAGES", "MAX_THREADS", "OPTIONS", "PARALLEL_MIN", "PRETRAIN_CODE",
    "PRETRAIN_SPLIT", "PROTOTYPES", "PretrainFaces", "RAFDB_TRAIN_COUNTS", "SPLITS", "SPLIT_CODES", "SyntheticFER",
    "VARIANTS", "batch_size", "check_options", "class_prior", "contact_sheet", "export", "factors_frame",
    "fingerprint", "iter_split", "label_distribution", "pretraining_faces", "render", "render_images",
    "render_split", "resolve_workers", "sample_factors", "spurious_target",
]
