"""A fer-bench dataset plugin in one file: three "expressions" drawn as mouth shapes on noisy faces.

Run it with:  fer-bench run --plugin examples/dataset_plugin.py --dataset mouths --methods majority,baseline
"""
import numpy as np

from fer_bench import labels as L
from fer_bench.data import DatasetAdapter, FERDataset, fingerprint_of
from fer_bench.registry import register_dataset


@register_dataset("mouths")
class Mouths(DatasetAdapter):
    """Mouths: happy (a smile), sad (a frown) and surprise (an open mouth) on grey noise; generated, no download."""

    splits = ("train", "val", "test")
    options = {"n": 120, "size": 32, "seed": 0}
    needs_root = False

    def load(self, split, root, n, size, seed):
        rng = np.random.default_rng([seed, self.splits.index(split)])
        labels = np.arange(n) % 3
        images = rng.integers(60, 120, size=(n, size, size, 3), dtype=np.uint8)
        x = np.linspace(-1, 1, size // 2)
        curve = (x ** 2 * size // 6).astype(int)                          # (size/2,) a parabola
        for i, c in enumerate(labels):
            rows = 3 * size // 4 + {0: -curve, 1: curve - size // 6, 2: 0 * curve}[int(c)]
            cols = np.arange(size // 4, size // 4 + size // 2)
            images[i, rows, cols] = 250
            if c == 2:                                                   # surprise: an open mouth
                images[i, 3 * size // 4 - 3:3 * size // 4 + 3, size // 2 - 3:size // 2 + 3] = 20
        return FERDataset(images=images, labels=labels, classes=(L.HAPPY, L.SAD, L.SURPRISE), name="mouths",
                          split=split, fingerprint=fingerprint_of("mouths", 1, n, size, seed, split))
