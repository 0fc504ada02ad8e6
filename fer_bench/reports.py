"""The built-in reports of every cell (registered in this order; see :mod:`fer_bench.evaluation`).

classification (accuracy, mean class accuracy, macro P / R / F1, per-class recall), retrieval and clustering of
the test embedding (Recall@K, Acc@K, kNN accuracy, NMI / AMI, MAP@R), the circumplex statistics of the six basic
emotions, divergence to the test label distributions (datasets that have them), cost (parameters, inference time,
peak memory), the method's own ``extra_results``, the training budget and the floor flag of the learning curve.
"""
from __future__ import annotations

import numpy as np
import torch

from fer_bench import cost as C
from fer_bench import divergence as D
from fer_bench import metrics as M
from fer_bench.circumplex import METRIC_KEYS as CIRCUMPLEX_KEYS
from fer_bench.circumplex import circumplex_report
from fer_bench.evaluation import EvalInputs, MetricSpec, register_report

# --------------------------------------------------------------------------------------------------
# predictions


@register_report("classification", needs=("scored_true", "scored_pred"), metrics=[
    MetricSpec("accuracy", "test accuracy", headline=0),
    MetricSpec("mean_class_accuracy", "mean over the test classes present of their recall", headline=1),
    MetricSpec("macro_precision", "precision averaged over the scored classes"),
    MetricSpec("macro_recall", "recall averaged over the scored classes"),
    MetricSpec("macro_f1", "F1 averaged over the scored classes", headline=2),
    MetricSpec("sgm_f1", "F1 of macro precision and macro recall (the SGMLoss paper's F1)"),
    MetricSpec("recall_class{c}", "recall of scored class c"),
])
def classification(x: EvalInputs) -> dict[str, float]:
    return M.classification_report(x.scored_true, x.scored_pred, x.num_scored)


# --------------------------------------------------------------------------------------------------
# the embedding


@register_report("embedding", needs=("train_emb", "test_emb", "train", "test"), metrics=[
    MetricSpec("recall@1", "Recall@1 of test-to-test retrieval", headline=5),
    MetricSpec("recall@{k}", "Recall@K of test-to-test retrieval"),
    MetricSpec("acc@{k}", "Acc@K of test-to-test retrieval (share of the K neighbours of the query's class)"),
    MetricSpec("knn_acc", "accuracy of an 11-NN vote against the training embeddings", headline=3),
    MetricSpec("nmi", "NMI of a k-means clustering of the test embedding with the labels", headline=4),
    MetricSpec("ami", "adjusted mutual information of the same clustering"),
    MetricSpec("map@r", "MAP@R of test-to-test retrieval", headline=6),
    MetricSpec("r_precision", "R-precision of test-to-test retrieval"),
])
def embedding(x: EvalInputs) -> dict[str, float]:
    return M.embedding_report(x.train_emb, x.train.labels, x.test_emb, x.test.labels, seed=x.seed)


@register_report("circumplex", needs=("test_emb", "test"), metrics=[
    MetricSpec("circumplex_tau", "Kendall tau of the centroids' angular order with Russell's circumplex",
               percent=False, headline=8),
    *(MetricSpec(key, "circumplex statistic (fer_bench.circumplex)", percent=False, higher_is_better=None)
      for key in CIRCUMPLEX_KEYS if key != "circumplex_tau"),
])
def circumplex(x: EvalInputs) -> dict[str, float]:
    return circumplex_report(x.test_emb, x.test.labels, x.test.classes, seed=x.seed)   # six basic only


@register_report("label_distribution", needs=("proba", "test"), metrics=[
    MetricSpec("kl_to_label_dist", "KL(test label distribution || predicted probabilities)", percent=False,
               higher_is_better=False, headline=7),
    MetricSpec("js_to_label_dist", "Jensen-Shannon divergence of the same", percent=False, higher_is_better=False),
])
def label_distribution(x: EvalInputs) -> dict[str, float]:
    if x.test.label_dist is None:
        return {}
    return {"kl_to_label_dist": D.kl_divergence(x.test.label_dist, x.proba),
            "js_to_label_dist": D.js_divergence(x.test.label_dist, x.proba)}


# --------------------------------------------------------------------------------------------------
# cost, the method's own figures, budget


def _cost(name: str, doc: str, **kw) -> MetricSpec:
    return MetricSpec(name, doc, percent=False, higher_is_better=None, **kw)


@register_report("cost", needs=("method", "test"), metrics=[
    _cost("params", "parameters of the fitted model (inference network)", headline=13, digits=0),
    _cost("infer_ms_per_image_b{batch}", "inference milliseconds per image at batch size b"),
    _cost("peak_memory_mb", "peak device memory (CUDA) or resident memory (CPU), MiB"),
])
def cost(x: EvalInputs) -> dict[str, float]:
    out: dict[str, float] = {}
    model = getattr(x.method, "model_", None)
    out["params"] = float(C.parameter_count(model)["total"]) if model is not None else 0.0
    device = getattr(x.method, "device_", torch.device("cpu"))
    for batch in (1, 64):
        images = x.test.images[: max(batch * 2, 8)]
        out[f"infer_ms_per_image_b{batch}"] = C.inference_ms_per_image(x.method.predict_proba, images, batch)
    out["peak_memory_mb"] = C.peak_memory_bytes(device) / 2 ** 20
    return out


@register_report("method", needs=("method", "train", "test", "workdir"), metrics=[])
def method_results(x: EvalInputs) -> dict[str, float]:
    """The method's own figures (``extra_results``; their names are its ``extra_metrics``)."""
    return x.method.extra_results(x.workdir / "extra", x.train, x.test)


BUDGET = [
    _cost("train_steps", "optimiser steps", headline=9, digits=0),
    _cost("train_anchor_images", "anchor images seen in training (the budget)", headline=10, digits=0),
    _cost("train_forward_images", "images through the network in training, all branches and passes"),
    _cost("train_seconds", "training wall seconds", headline=11),
    _cost("train_cpu_seconds", "training process CPU seconds", headline=12),
    _cost("train_images_per_s", "forward images per training second"),
    _cost("train_aux_anchor_images", "anchor images of an auxiliary stage (SCE-ALD's auto-encoder)"),
    _cost("train_aux_steps", "steps of an auxiliary stage"),
]


@register_report("budget", needs=("method",), metrics=BUDGET)
def budget(x: EvalInputs) -> dict[str, float]:
    info = getattr(x.method, "train_info_", {})
    return {s.name: float(info[s.name]) for s in BUDGET if s.name in info}


FLOOR_MARGIN = 0.01   # a final validation accuracy within 1 point of the majority class is "at the floor"


@register_report("floor", needs=("method", "train", "val"), metrics=[
    MetricSpec("val_floor_accuracy", "validation accuracy of the training set's majority class"),
    MetricSpec("final_val_accuracy", "validation accuracy at the learning curve's last point"),
    MetricSpec("at_floor", "1 when the final validation accuracy is within 1 point of the floor", percent=False,
               higher_is_better=False),
])
def floor(x: EvalInputs) -> dict[str, float]:
    """``val_floor_accuracy`` (the validation accuracy of predicting the training set's majority class),
    ``final_val_accuracy`` (the learning curve's last point) and ``at_floor`` (1.0 within ``FLOOR_MARGIN``)."""
    curve = getattr(x.method, "train_info_", {}).get("curve", [])
    if not curve or "val_accuracy" not in curve[-1]:
        return {}
    majority = np.bincount(np.asarray(x.train.labels)).argmax()
    floor_accuracy = float((np.asarray(x.val.labels) == majority).mean())
    final = float(curve[-1]["val_accuracy"])
    return {"val_floor_accuracy": floor_accuracy, "final_val_accuracy": final,
            "at_floor": float(final <= floor_accuracy + FLOOR_MARGIN)}
