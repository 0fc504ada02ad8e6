"""A fer-bench metric plugin in one file: the Brier score of every cell's predicted probabilities.

Run it with:  fer-bench run --plugin examples/brier_metric.py --methods baseline --profile test
"""
import numpy as np

from fer_bench.evaluation import EvalInputs, MetricSpec, register_report


@register_report("brier", needs=("proba", "test"), metrics=[
    MetricSpec("brier", "mean squared distance of the predicted probabilities to the one-hot test labels",
               percent=False, higher_is_better=False)])
def brier(x: EvalInputs) -> dict[str, float]:
    onehot = np.eye(x.proba.shape[1])[x.test.labels]                   # (N, C)
    return {"brier": float(((x.proba - onehot) ** 2).sum(1).mean())}
