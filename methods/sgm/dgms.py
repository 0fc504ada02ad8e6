"""DGMS (deep Gaussian mixture sub-spaces): SGM retrained on EM-split sub-classes, level after level (see
:mod:`fer_bench_methods.sgm`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

import fer_bench.models.sgm_backbones  # noqa: F401  (registers fmpnet, cvgg13, preactresnet18)
from fer_bench import labels as L
from fer_bench.data import FERDataset
from fer_bench.evaluation import MetricSpec
from fer_bench.method import (QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, Param, ParameterError, class_means,
                              gaussian_logits)
from fer_bench.registry import register_method
from fer_bench_methods.sgm import SGM
from fer_bench_methods.sgm.losses import gmm_split


@register_method("dgms")
class DGMS(SGM):
    """Deep Gaussian Mixture Sub-space learning: SGM retrained on EM-split sub-classes, level after level.

    One fit of ``epochs`` epochs (the whole budget) in ``levels`` equal stages: at the start of stage l
    (l >= 2) the current embeddings of the training set are split by EM and training continues on the
    sub-classes (same network and optimizer: a warm start, as ``train_mitosis.py``).
    """

    extra_metrics = (
        MetricSpec("dgms_subclasses", "sub-classes after the last level", percent=False, higher_is_better=None,
                   digits=0),
        MetricSpec("dgms_variant_nmi_{split}", "within-class NMI of the sub-classes with the generator's variants"),
    )

    params: ClassVar[dict[str, Param]] = {
        "levels": Param(5, int, low=1, doc="L: the last level splits each class into up to L sub-classes"),
        "mc": Param(10, int, low=1, doc="a class of n images gets at most n // mc sub-classes"),
        "gmm_covariance": Param("full", choices=("full", "diag"), doc="covariance of the EM components"),
        "gmm_reg_covar": Param(1e-3, float, low=0.0, closed="neither",
                               doc="added to the covariance diagonals (64-d full covariances of small classes)"),
        "figure_class": Param(None, str, none_ok=True,
                              doc="emotion shown in the top-16 figure (None: the class with most sub-classes)"),
        "top_k": Param(16, int, low=1, doc="images per sub-class in the medoid figure (Figures 8-9: 16)"),
    }
    profiles = {
        "test": {"epochs": 2, "image_size": 24, "n_per_class": 8, "eval_batch_size": 64, "levels": 2, "mc": 4,
                 "gmm_covariance": "diag"},
        # Quick: the budget's 10 epochs over 3 levels (3, 4 and 3 epochs), constant lr as SGM's quick.
        # From the face-pretrained trunk, init_spread 16 as SGM's quick profile (the same loss on the same trunk).
        "quick": {"augment": QUICK_AUGMENT, "epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 1e-3, "scheduler": "none", "levels": 3,
                  "pretrained": QUICK_INIT, "inits": {QUICK_INIT: {"init_spread": 16.0}}},
        # Section 4.2.3: ResNet18, Adam lr 1e-4, batch 640, 500 epochs, L = 5; Mc = 10 from train_mitosis.py.
        # ``epochs`` is the whole fit: 500 = 100 per level x 5 levels.
        "paper": {"backbone": "resnet18", "pretrained": "imagenet", "image_size": 112, "epochs": 500, "levels": 5,
                  "n_per_class": 30, "optimizer": "adam", "lr": 1e-4, "augment": "standard", "select": "last"},
    }

    def level_start(self, level: int) -> int:
        """0-based epoch at which ``level`` (1-based) begins."""
        return int(round((level - 1) * self.epochs / self.levels))

    def on_fit_start(self, train: FERDataset) -> None:
        if self.epochs < self.levels:
            raise ParameterError(f"dgms: epochs ({self.epochs}) is the whole fit and must be >= levels ({self.levels}), "
                                 f"so that every level trains; raise epochs or lower levels.")
        super().on_fit_start(train)
        self.class_labels_ = self.train_labels_.clone()
        self.parent_ = torch.arange(self.num_classes_)
        self.level_ = 1
        self.levels_ = [{"level": 1, "subclasses": self.num_classes_, "epoch": 0}]

    def on_epoch_start(self, epoch: int) -> None:
        level = max(lv for lv in range(1, self.levels + 1) if self.level_start(lv) <= epoch)
        if level <= self.level_:
            return
        sub, parent = gmm_split(self.train_embeddings(), self.class_labels_.cpu().numpy(), level, self.mc,
                                self.gmm_covariance, self.gmm_reg_covar, self.seed)
        self.train_labels_ = torch.from_numpy(sub).to(self.class_labels_.device)
        self.parent_ = torch.from_numpy(parent)
        self.level_ = level
        self.levels_.append({"level": level, "subclasses": len(parent), "epoch": epoch})

    def training_state(self) -> dict[str, Any]:
        return {"level": self.level_, "labels": self.train_labels_.cpu(), "parent": self.parent_,
                "levels": self.levels_}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.level_, self.parent_, self.levels_ = state["level"], state["parent"], state["levels"]
        self.train_labels_ = state["labels"].to(self.class_labels_.device)

    def after_fit(self, train: FERDataset) -> None:
        self.subclass_labels_ = self.train_labels_.cpu()
        super().after_fit(train)
        del self.level_, self.class_labels_

    def gallery_classes(self, train_labels: np.ndarray) -> np.ndarray:
        return self.parent_.numpy()[np.asarray(train_labels)]

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "parent": self.parent_, "subclass_labels": self.subclass_labels_}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.parent_ = state.pop("parent")
        self.subclass_labels_ = state.pop("subclass_labels")
        super()._set_state(state)

    # -- sub-classes ---------------------------------------------------------------------------------
    def subclass_means(self) -> torch.Tensor:
        """(K, d) means of the training embeddings of each sub-class (final model)."""
        return class_means(self.gallery_emb_, self.subclass_labels_, len(self.parent_))

    def assign_subclasses(self, emb: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(N,) nearest sub-class mean among the sub-classes of each row's class (Eq. 5 within a class)."""
        logits = gaussian_logits(torch.from_numpy(np.asarray(emb, np.float32)), self.subclass_means(), 1.0)  # (N, K)
        allowed = self.parent_[None, :] == torch.from_numpy(np.asarray(classes))[:, None]                       # (N, K)
        return logits.masked_fill(~allowed, float("-inf")).argmax(1).numpy()

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        out = super().extra_results(out_dir, train, test)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        parent = self.parent_.numpy()
        train_sub = self.subclass_labels_.numpy()
        test_emb = self._embed(test.images)
        test_sub = self.assign_subclasses(test_emb, test.labels)
        np.save(out_dir / "subclass_parent.npy", parent)
        np.save(out_dir / "train_subclass.npy", train_sub)
        np.save(out_dir / "test_subclass.npy", test_sub)
        out["dgms_subclasses"] = float(len(parent))
        for split, data, sub in (("train", train, train_sub), ("test", test, test_sub)):
            if data.factors is not None and "variant" in getattr(data.factors, "columns", ()):
                variant = np.asarray(data.factors["variant"])
                out[f"dgms_variant_nmi_{split}"] = within_class_nmi(sub, variant, data.labels)
        names = [f"{L.names([train.classes[c]])[0]}.{j}" for c, j in zip(parent, _rank_within(parent))]
        from fer_bench import plots as P
        P.plot_embedding_2d(self.gallery_emb_.numpy(), train_sub, names, out_dir / "dgms_embedding_subclasses.png",
                            seed=self.seed, title="DGMS sub-classes (training embeddings, PCA)")
        self._medoid_figure(out_dir / "dgms_top16.png", train)
        return out

    def _medoid_figure(self, path: Path, train: FERDataset) -> Path:
        """For the chosen class, the ``top_k`` training images nearest each sub-class medoid, one row each
        (the medoid is the member nearest the sub-class mean; Figures 8-9)."""
        from fer_bench import plots as P

        parent = self.parent_.numpy()
        if self.figure_class is None:
            chosen = int(np.bincount(parent).argmax())
        else:
            cid = L.canonical_id(self.figure_class)
            if cid not in train.classes:
                raise ParameterError(f"The 'figure_class' parameter of {self.display_name()} must be a class of the "
                                     f"training data ({', '.join(train.class_names)}). Got {self.figure_class!r} instead.")
            chosen = train.classes.index(cid)
        emb, sub = self.gallery_emb_, self.subclass_labels_.numpy()
        rows = [k for k in range(len(parent)) if parent[k] == chosen]
        fig = P._new_figure(self.top_k * 0.8 + 1.5, len(rows) * 0.9 + 0.5)
        for r, k in enumerate(rows):
            members = np.flatnonzero(sub == k)
            z = emb[members]                                                    # (n_k, d)
            medoid = members[int((z - z.mean(0)).norm(dim=1).argmin())]
            order = (z - emb[medoid]).norm(dim=1).argsort()[: self.top_k].numpy()
            variant = ""
            if train.factors is not None and "variant_name" in getattr(train.factors, "columns", ()):
                names = train.factors["variant_name"].to_numpy()[members]
                top, count = np.unique(names, return_counts=True)
                variant = f"\n{top[count.argmax()]} {count.max() / len(members):.0%}"
            for c, i in enumerate(members[order]):
                ax = fig.add_subplot(len(rows), self.top_k, r * self.top_k + c + 1)
                ax.imshow(np.asarray(train.images[i]))
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"sub {r} (n={len(members)}){variant}", fontsize=6, rotation=0, ha="right", va="center")
        fig.suptitle(f"DGMS: the {self.top_k} images nearest each sub-class medoid, class {train.class_names[chosen]}",
                     fontsize=9)
        return P._save(fig, path)


def _rank_within(parent: np.ndarray) -> list[int]:
    """Index of each sub-class among the sub-classes of its parent class."""
    seen: dict[int, int] = {}
    out = []
    for c in parent:
        out.append(seen.get(int(c), 0))
        seen[int(c)] = out[-1] + 1
    return out


def within_class_nmi(subclasses: np.ndarray, factor: np.ndarray, classes: np.ndarray) -> float:
    """NMI between sub-class ids and a factor inside each class, averaged with class-size weights.

    Sub-classes nest in classes, so an NMI over all images would mostly measure the classes; this
    one scores how well the split of each class matches the factor (1: the same partition).
    """
    from sklearn.metrics import normalized_mutual_info_score

    total, weight = 0.0, 0
    for c in np.unique(classes):
        idx = classes == c
        if len(np.unique(factor[idx])) < 2 and len(np.unique(subclasses[idx])) < 2:
            continue                                                     # nothing to split, nothing to find
        total += idx.sum() * normalized_mutual_info_score(factor[idx], subclasses[idx])
        weight += int(idx.sum())
    return total / weight if weight else float("nan")
