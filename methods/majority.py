"""The majority-class floor: predicts the most frequent training class for every image.

Every results table shows it: a method that does not beat it has learned nothing but the prior.
``predict_proba`` is the training class prior (so its log-loss is the prior's entropy), and ``embed``
is a constant zero vector of width 1 (it has no representation; embedding metrics on it are chance).
"""
from __future__ import annotations

import numpy as np
import torch

from fer_bench.method import Method
from fer_bench.registry import register_method


@register_method("majority")
class Majority(Method):
    """Most frequent training class; probabilities = the training class prior."""

    profiles = {"test": {}, "quick": {}, "paper": {}}
    learns = False   # the floor itself: the contract suite does not ask it to beat itself

    def _fit(self, train, val):
        counts = np.bincount(train.labels, minlength=self.num_classes_).astype(np.float64)
        self.prior_ = (counts / counts.sum()).astype(np.float32)

    def _predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.prior_, (len(images), self.num_classes_)).copy()

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), 1), dtype=np.float32)

    def _get_state(self):
        return {"prior": torch.from_numpy(self.prior_)}

    def _set_state(self, state):
        self.prior_ = state["prior"].numpy().astype(np.float32)
