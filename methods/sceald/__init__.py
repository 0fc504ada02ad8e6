"""SCE-ALD: label distributions amended by the semantic correlations of emotion words.

Paper: Mao, Xu, Liu, Lu, "Label Distribution Amendment with Emotional Semantic Correlations for Facial
Expression Recognition" (arXiv 2107.11061; ``shared/papers/sce-ald-semantic-label-distribution.txt``).
No public code exists; the algorithm below follows the paper's equations and the derivation in
``shared/notes/methods.md`` section 2, with every ambiguity a named parameter.

Implemented, per equation:

- Eq. 1, semantic space: an auto-encoder (encoder ``g`` = a backbone + linear layer to the word
  dimension, decoder = linear + transposed convolutions) trained *separately, first*, with
  ``mean ||x - x_hat||^2 + sem_gamma * (1 - cos(V(y), g(x)))`` by the one training loop; then frozen.
  ``V`` are the word vectors of the class words (``fer_bench.wordvec``: a user file or the committed
  default table, never random).
- Eq. 2, semantic class-relation vectors ``S_s[i, k] = cos(v_k, g(x_i))``, computed once.
- Eq. 3, task class-relation vectors ``S_t[i, k] = cos(p_k, f(x_i))`` with ``f`` the backbone's pooled
  feature (the input of the classifier head).
- Eq. 4, prototypes ``p_k`` = confidence-weighted aggregate of the class's features:
  ``prototype_norm='weighted_mean'`` (default) ``sum(alpha f) / sum(alpha)``; ``'literal'`` the paper's
  ``sum(alpha f) / n_k`` (inflates prototype norms by mean(alpha), which distorts Eq. 6).
- Eq. 5, confidence ``alpha_i = 1 / (W(S_s_i, S_t_i) + eps)``, clipped to ``alpha_max``. ``wasserstein``:
  ``'values'`` (default, literal) the 1-D W1 between the two sets of c values (``scipy.stats.
  wasserstein_distance``: mean |sorted a - sorted b|; blind to which class has which value) or
  ``'class_aware'``: the exact optimal-transport cost between the two vectors turned into
  histograms over classes (``(s + 1) / 2``, normalised) with ground metric ``1 - cos(v_k, v_l)`` of
  the word vectors (POT ``ot.emd2``; ``pip install pot``).
- Eq. 6, label distribution ``l_ik`` proportional to ``1 / (||f(x_i) - p_k||^2 + ld_eps)``, normalised over k.
- Eq. 7, loss ``beta * CE(logits, y) + (1 - beta) * CE(logits, l_i)``; the distribution term is on
  from epoch ``round(ld_start * epochs)`` (0-based; the paper: from the 10th of 40 epochs, so
  ``ld_start=0.225``), before that the loss is plain CE. ``beta=1`` is the paper's Baseline.

Per epoch (``on_epoch_end``), a no-grad pass over the training images (eval mode, no augmentation)
recomputes features ``F``; ``S_t`` uses prototypes of ``F`` weighted by the previous confidences
(alpha = 1 on the first pass, as the paper initialises); then new alpha, new prototypes and the
amended distributions ``l`` that the next epoch trains on. Our choice where the paper is silent:
prototypes come from the current features (not last epoch's), alpha only enters through the
prototypes (the loss is not weighted per sample), the AE is trained from scratch (the paper
pre-trains a "VGG10" AE and a VGG16 on MS-Celeb-1M, which we do not have).

Fitted state for plots: ``label_distributions_`` (N, C), ``confidences_`` (N,),
``semantic_relations_`` / ``task_relations_`` (N, C), ``prototypes_`` (C, D), ``word_vectors_`` (C, Dw),
``amend_history_`` (per-epoch summaries); ``amend(images)`` gives (l, alpha) for new images.
``extra_results`` reports how many noisy labels the amended distribution put back on the true class
and, where the dataset has ground-truth distributions (synthetic), KL and top-2 agreement to them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_bench import labels as L
from fer_bench.data import FERDataset, stratified_holdout
from fer_bench.evaluation import MetricSpec
from fer_bench.method import QUICK_AUGMENT, QUICK_BATCH, QUICK_EPOCHS, QUICK_INIT, Param, TorchMethod
from fer_bench.params import uniform
from fer_bench.models import build_backbone
from fer_bench.models.pretrained import SYNTHETIC_FACES, weights_records
from fer_bench.registry import register_method
from fer_bench_methods.baseline import BackboneClassifier
import fer_bench_methods.sceald.wordvec as wordvec
from fer_bench_methods.sceald.maths import (_SemanticStage, amended_distribution, confidences,  # noqa: F401
                                            cosine_relations, mixed_loss, relation_histograms, semantic_loss,
                                            wasserstein_class_aware, wasserstein_values, weighted_prototypes)
from fer_bench_methods.sceald.report import (_rows_of, amend_summary, first_per_class,  # noqa: F401
                                             plot_label_distributions, write_report)

log = logging.getLogger(__name__)


@register_method("sceald")
class SCEALD(TorchMethod):
    """SCE-ALD: CE + CE on label distributions amended by semantic class-relation confidences."""

    extra_metrics = (
        MetricSpec("ld_entropy_mean", "mean entropy of the amended training label distributions",
                   percent=False, higher_is_better=None),
        MetricSpec("alpha_mean", "mean confidence alpha of the training images", percent=False, higher_is_better=None),
        MetricSpec("alpha_clean_mean", "mean alpha of the images whose label noise left clean",
                   percent=False, higher_is_better=None),
        MetricSpec("alpha_noisy_mean", "mean alpha of the images with a noisy label",
                   percent=False, higher_is_better=None),
        MetricSpec("alpha_auc_clean_vs_noisy", "ROC AUC of alpha separating clean from noisy labels",
                   percent=False, higher_is_better=True),
        MetricSpec("ld_top1_is_label", "share of amended distributions whose top class is the trained label",
                   percent=True, higher_is_better=None),
        MetricSpec("noise_rate_seen", "share of noisy labels in the training labels used",
                   percent=True, higher_is_better=None),
        MetricSpec("noisy_recovered_top{n}", "share of noisy labels whose true class is in the amended top n",
                   percent=True, higher_is_better=True),
        MetricSpec("blended_fraction", "share of images whose true distribution blends two classes",
                   percent=True, higher_is_better=None),
        MetricSpec("ld_kl_to_truth", "KL(true distribution || amended distribution)",
                   percent=False, higher_is_better=False),
        MetricSpec("ld_top1_agrees_truth", "top class of the amended distribution = true top class",
                   percent=True, higher_is_better=True),
        MetricSpec("ld_top2_agrees_truth_blended", "top-2 classes agree, over blended images",
                   percent=True, higher_is_better=True),
        MetricSpec("test_ld_{statistic}", "an ld_* statistic above, of the test split's amended distributions",
                   percent=False, higher_is_better=None),
    )

    params = {
        "beta": Param(0.7, float, low=0.0, high=1.0, search=uniform(0.3, 0.95), doc="Eq. 7 weight of the one-hot CE; 1 = Baseline"),
        "ld_start": Param(0.225, float, low=0.0, high=1.0, closed="left",
                          doc="fraction of epochs before the distribution term starts (paper: epoch 10 of 40)"),
        "word_vectors": Param("default", str, doc="'default' (committed table) or a vector file path"),
        "sem_gamma": Param(1.0, float, low=0.0, doc="Eq. 1 gamma (not given in the paper)"),
        "ae_backbone": Param("smallcnn", str, doc="encoder backbone of the semantic auto-encoder"),
        "ae_epochs": Param(5, int, low=1),
        "ae_lr": Param(1e-3, float, low=0.0, closed="neither"),
        "wasserstein": Param("values", choices=("values", "class_aware")),
        "prototype_norm": Param("weighted_mean", choices=("weighted_mean", "literal")),
        "eps": Param(1e-3, float, low=0.0, closed="neither", doc="Eq. 5 epsilon"),
        "alpha_max": Param(1e3, float, low=0.0, closed="neither", doc="clip of alpha"),
        "ld_eps": Param(1e-8, float, low=0.0, closed="neither", doc="Eq. 6 floor on squared distances"),
        "dropout": Param(0.0, float, low=0.0, high=1.0, closed="left"),
    }
    profiles = {
        "test": {"epochs": 2, "image_size": 24, "batch_size": 64, "ae_epochs": 1, "ld_start": 0.5,
                 "ae_backbone": "smallcnn_tiny"},
        # The baseline's quick settings (so beta=1 reproduces the baseline exactly) + a short AE stage.
        "quick": {"augment": QUICK_AUGMENT, "epochs": QUICK_EPOCHS, "image_size": 48, "batch_size": QUICK_BATCH, "lr": 2e-3, "scheduler": "cosine",
                  "ae_epochs": 3, "ae_lr": 2e-3, "pretrained": QUICK_INIT},
        # Section III-D: VGG16 task backbone, batch 32, lr 1e-4, 40 epochs, LD term from the 10th epoch,
        # beta 0.7, 224 px MTCNN-aligned faces. Optimiser unstated (Adam is our choice); the MS-Celeb-1M
        # pre-training is replaced by ImageNet weights; the "VGG10" AE by a smallcnn encoder.
        "paper": {"backbone": "vgg16", "pretrained": "imagenet", "image_size": 224, "epochs": 40,
                  "batch_size": 32, "optimizer": "adam", "lr": 1e-4, "ld_start": 0.225, "beta": 0.7,
                  "augment": "standard", "ae_epochs": 20, "ae_lr": 1e-4, "select": "best_val"},
    }

    # -- building -------------------------------------------------------------------------------------
    def build(self, num_classes: int) -> nn.Module:
        backbone = build_backbone(self.backbone, pretrained=self.pretrained, in_size=self.image_size)
        return BackboneClassifier(backbone, num_classes, self.dropout)

    def on_fit_start(self, train: FERDataset) -> None:
        self.word_vectors_ = torch.from_numpy(wordvec.emotion_vectors(train.classes, self.word_vectors))  # (C, Dw)
        self.word_cosines_ = torch.from_numpy(wordvec.cosine_matrix(self.word_vectors_.numpy())).float()  # (C, C)
        self.train_fingerprint_ = train.fingerprint
        self.train_labels_np_ = np.asarray(train.labels, dtype=np.int64)
        self._train_semantic_space(train)
        self.label_distributions_ = None
        self.confidences_ = None
        self.amend_history_ = []
        self.amend_images_ = 0                    # images through the network in the no-grad amend passes
        self.current_epoch_ = 0

    def _train_semantic_space(self, train: FERDataset) -> None:
        """Eq. 1, then Eq. 2: the frozen AE's relations S_s of every training image."""
        # The AE encoder starts from fer-bench's face-pretrained weights when the task backbone does; weights
        # meant for the task backbone (ImageNet, a file) do not fit its small encoder: random init then.
        ae_init = self.pretrained if self.pretrained is not None and self.pretrained.lower() == SYNTHETIC_FACES else None
        ae = _SemanticStage(backbone=self.ae_backbone, pretrained=ae_init, image_size=self.image_size,
                            epochs=self.ae_epochs,
                            batch_size=self.batch_size, eval_batch_size=self.eval_batch_size, lr=self.ae_lr,
                            optimizer="adam", augment=self.augment, seed=self.seed, device=str(self.device_),
                            amp=self.amp, sem_gamma=self.sem_gamma, word_dim=int(self.word_vectors_.shape[1]))
        ae.word_vectors = self.word_vectors_
        ae.workdir = str(Path(self.workdir) / "semantic_ae") if self.workdir else None
        ae.progress = self.progress
        ae.fit(train)
        self.ae_ = ae
        self.semantic_relations_ = ae.map_batches(train.images, ae.logits).to(self.device_)  # (N, C)

    # -- the epoch schedule ----------------------------------------------------------------------------
    def first_ld_epoch(self) -> int:
        """0-based index of the first epoch whose loss has the distribution term."""
        return int(round(self.ld_start * self.epochs))

    def on_epoch_start(self, epoch: int) -> None:
        self.current_epoch_ = epoch

    def _ld_active(self) -> bool:
        return self.beta < 1.0 and self.current_epoch_ >= self.first_ld_epoch()

    def on_epoch_end(self, epoch: int) -> None:
        if self.beta < 1.0 and epoch + 1 >= self.first_ld_epoch():
            self.amend_now()

    @torch.no_grad()
    def amend_now(self) -> None:
        """The per-epoch no-grad pass: features -> S_t -> alpha -> prototypes -> amended l (Eqs. 3-6)."""
        feats = self.map_training_images()                                  # (N, D), eval mode, no augmentation
        n = len(feats)
        self.amend_images_ = getattr(self, "amend_images_", 0) + n
        labels, c = self.train_labels_, self.num_classes_
        previous = self.confidences_ if self.confidences_ is not None else torch.ones(n, device=feats.device)
        self.task_relations_ = cosine_relations(feats, weighted_prototypes(feats, labels, previous, c, self.prototype_norm))
        if self.wasserstein == "values":
            dist = wasserstein_values(self.semantic_relations_, self.task_relations_)
        else:
            dist = wasserstein_class_aware(self.semantic_relations_, self.task_relations_,
                                           (1.0 - self.word_cosines_).clamp_min(0.0))
        self.confidences_ = confidences(dist, self.eps, self.alpha_max)     # (N,)
        self.prototypes_ = weighted_prototypes(feats, labels, self.confidences_, c, self.prototype_norm)  # (C, D)
        self.label_distributions_ = amended_distribution(feats, self.prototypes_, self.ld_eps)           # (N, C)
        ent = -(self.label_distributions_ * self.label_distributions_.clamp_min(1e-12).log()).sum(1)
        self.amend_history_.append({"epoch": self.current_epoch_ + 1, "alpha_mean": float(self.confidences_.mean()),
                                    "wasserstein_mean": float(dist.mean()), "ld_entropy_mean": float(ent.mean()),
                                    "ld_top1_agrees_with_label": float((self.label_distributions_.argmax(1) == labels)
                                                                       .float().mean())})

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model_(batch["x"])                                   # (B, C)
        dist = None
        if self._ld_active():
            if self.label_distributions_ is None:  # ld_start=0, or resumed from a checkpoint
                self.amend_now()
            dist = self.label_distributions_[batch["index"].to(self.label_distributions_.device)]  # (B, C)
        return mixed_loss(logits, batch["y"], dist, self.beta)

    # -- after training --------------------------------------------------------------------------------
    def after_fit(self, train: FERDataset) -> None:
        """The auto-encoder stage is part of this method's cost: its images and seconds are added; its
        anchors are reported apart (``train_aux_anchor_images``), the budget counts the task network's."""
        ae, info = self.ae_.train_info_, self.train_info_
        for key in ("train_seconds", "train_cpu_seconds", "train_forward_images"):
            info[key] += ae[key]
        info["train_forward_images"] += self.amend_images_
        info["train_aux_anchor_images"] = ae["train_anchor_images"]
        info["train_aux_steps"] = ae["train_steps"]

    @torch.no_grad()
    def amend(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(l, alpha) of new images with the final prototypes: Eq. 6 and Eq. 5 (labels are not needed)."""
        self._require_fitted()
        if getattr(self, "prototypes_", None) is None:
            raise RuntimeError("This SCE-ALD fit never amended a distribution (beta=1 or ld_start too late); "
                               "fit with beta < 1 to get amended distributions.")
        feats = self.map_batches(images, self.features).to(self.prototypes_.device)           # (N, D)
        s_s = self.ae_.map_batches(images, self.ae_.logits).to(self.prototypes_.device)        # (N, C)
        s_t = cosine_relations(feats, self.prototypes_)
        if self.wasserstein == "values":
            dist = wasserstein_values(s_s, s_t)
        else:
            dist = wasserstein_class_aware(s_s, s_t, (1.0 - self.word_cosines_).clamp_min(0.0))
        alpha = confidences(dist, self.eps, self.alpha_max)
        return amended_distribution(feats, self.prototypes_, self.ld_eps).cpu().numpy(), alpha.cpu().numpy()

    def extra_results(self, out_dir: Path, train: FERDataset, test: FERDataset) -> dict[str, float]:
        from fer_bench import plots as P

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = L.names(self.classes_)
        P.plot_cosine_matrix(self.word_cosines_.numpy(), names, out_dir / "word_cosines.png",
                             title="cosine of the emotion-word vectors (Fig. 3)")
        out: dict[str, float] = {}
        if self.label_distributions_ is None:
            return out
        rows = self._fitted_rows(train)
        ld = self.label_distributions_.cpu().numpy()
        alpha = self.confidences_.cpu().numpy()
        used = self.train_labels_np_
        np.save(out_dir / "train_amended_dist.npy", ld.astype(np.float32))
        np.save(out_dir / "train_alpha.npy", alpha.astype(np.float32))
        np.save(out_dir / "train_labels_used.npy", used)
        np.save(out_dir / "train_rows.npy", rows)
        out.update(amend_summary(ld, alpha, used, _rows_of(train.meta.get("clean_labels"), rows),
                                 _rows_of(train.label_dist, rows)))
        test_ld, test_alpha = self.amend(test.images)
        np.save(out_dir / "test_amended_dist.npy", test_ld.astype(np.float32))
        np.save(out_dir / "test_alpha.npy", test_alpha.astype(np.float32))
        if test.label_dist is not None:
            scores = amend_summary(test_ld, test_alpha, test.labels, None, test.label_dist)
            out.update({f"test_{k}": v for k, v in scores.items() if k.startswith(("ld_kl", "ld_top"))})
        picks = first_per_class(test.labels, self.num_classes_)
        plot_label_distributions(test.images[picks], names, [test.labels[picks]], [test_ld[picks]],
                                 [test_alpha[picks]], ["label"], out_dir / "test_label_distributions.png")
        return out

    def _fitted_rows(self, train: FERDataset) -> np.ndarray:
        """Rows of ``train`` that the fit trained on (all, or the part left after a validation hold-out)."""
        if train.fingerprint == self.train_fingerprint_:
            return np.arange(len(train))
        fit_idx, _, _ = stratified_holdout(train.labels, self.val_fraction, self.seed, train.groups)
        if train.subset(fit_idx, "train").fingerprint != self.train_fingerprint_:
            raise ValueError("extra_results got a training set that is not the one this SCE-ALD was fitted on; "
                             "pass the same train split given to fit.")
        return fit_idx

    # -- persistence ----------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["ae"] = {k: v.detach().cpu() for k, v in self.ae_.model_.state_dict().items()}
        state["word_vectors"] = self.word_vectors_.cpu()
        for name in ("prototypes_", "label_distributions_", "confidences_"):
            value = getattr(self, name, None)
            if value is not None:
                state[name] = value.detach().cpu()
        return state

    def weights_used(self) -> list[dict[str, str]]:
        ae = getattr(self, "ae_", None)
        return weights_records(getattr(self, "model_", None), getattr(ae, "model_", None))

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self.word_vectors_ = state["word_vectors"].float()
        self.word_cosines_ = torch.from_numpy(wordvec.cosine_matrix(self.word_vectors_.numpy())).float()
        ae = _SemanticStage(backbone=self.ae_backbone, image_size=self.image_size, eval_batch_size=self.eval_batch_size,
                            seed=self.seed, device=self.device, amp=self.amp, sem_gamma=self.sem_gamma,
                            word_dim=int(self.word_vectors_.shape[1]))
        ae.word_vectors = self.word_vectors_
        ae.num_classes_ = self.num_classes_
        ae.is_fitted_ = True
        ae._ensure_model()
        ae.model_.load_state_dict(state["ae"])
        ae.model_.eval()
        self.ae_ = ae
        for name in ("prototypes_", "label_distributions_", "confidences_"):
            setattr(self, name, state[name].to(self.device_) if name in state else None)
