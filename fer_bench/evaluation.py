"""What a cell measures, declared once: the metric registry and the reports ``run_cell`` iterates.

Every metric a cell can record has a :class:`MetricSpec` (its name or a name pattern such as ``recall@{k}``,
what it means, whether tables show it in %, whether higher is better, its place in the run summary). A
*report* is a function registered with :func:`register_report` that computes a group of metrics from a
cell's :class:`EvalInputs` (it declares the metrics it writes and the inputs it needs; it is skipped when an
input is missing, e.g. the label-distribution report on a dataset without label distributions).
``evaluate`` runs every report in registration order; tables take the headline columns and scales from the
specs; benchmark files are checked against them (``check_metric_name``, with "did you mean").

Methods declare their own metrics (the values ``extra_results`` returns) in ``Method.extra_metrics``; the
contract suite checks that a method returns no undeclared name.

The built-in reports live in :mod:`fer_bench.reports` (importing it registers them). Adding a metric to
every cell is one new module with a ``@register_report`` function, imported by ``fer_bench.reports`` or
loaded as a plugin (see the README, "Adding a metric").
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric, or a family of them when ``name`` has a ``{placeholder}`` (e.g. ``recall@{k}``).

    percent: a fraction that tables show x100 (with ``(%)`` in headers); False: shown as it is.
    higher_is_better: True / False, or None for a descriptive figure (counts, seconds).
    headline: position among the run summary's columns (summary.md), None: not in it.
    digits: decimals in the run summary.
    """

    name: str
    doc: str
    percent: bool = True
    higher_is_better: bool | None = True
    headline: int | None = None
    digits: int = 2

    def matches(self, name: str) -> bool:
        return _pattern(self.name).fullmatch(name) is not None


def _pattern(name: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", name)
    return re.compile(r"[A-Za-z0-9_.]+".join(re.escape(p) for p in parts))


@dataclasses.dataclass
class EvalInputs:
    """What a cell's reports may read (None: not available in this cell).

    scored_true / scored_pred: test labels and predictions as positions among the ``num_scored`` scored
    classes (all training classes, or those a cross-dataset test set shares with training). proba: (N, C)
    over the training classes. test_emb / train_emb: the method's embeddings. train / val / test: the
    cell's datasets (test in the training label space). method: the fitted method. workdir: the cell's folder.
    """

    scored_true: np.ndarray
    scored_pred: np.ndarray
    num_scored: int
    seed: int
    proba: np.ndarray | None = None
    test_emb: np.ndarray | None = None
    train_emb: np.ndarray | None = None
    train: Any = None
    val: Any = None
    test: Any = None
    method: Any = None
    workdir: Any = None


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    fn: Callable[[EvalInputs], dict[str, float]]
    metrics: tuple[MetricSpec, ...]
    needs: tuple[str, ...]


METRICS: list[MetricSpec] = []
REPORTS: dict[str, Report] = {}


def register_report(name: str, metrics: Iterable[MetricSpec], needs: Sequence[str] = ()) -> Callable:
    """Register ``fn(inputs) -> {metric: value}`` as report ``name``, writing ``metrics``; it runs when every
    field of ``EvalInputs`` named in ``needs`` is not None."""
    metrics = tuple(metrics)
    fields = {f.name for f in dataclasses.fields(EvalInputs)}
    unknown = sorted(set(needs) - fields)
    if unknown:
        raise ValueError(f"report {name!r} needs {unknown[0]!r}, which EvalInputs does not have; "
                         f"allowed: {', '.join(sorted(fields))}.")

    def decorator(fn: Callable[[EvalInputs], dict[str, float]]) -> Callable[[EvalInputs], dict[str, float]]:
        if name in REPORTS and REPORTS[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"a report named {name!r} is already registered ({REPORTS[name].fn.__module__}).")
        declare(*metrics)
        REPORTS[name] = Report(name, fn, metrics, tuple(needs))
        return fn
    return decorator


def declare(*specs: MetricSpec) -> None:
    """Add metric specs to the registry (a name declared twice must be declared the same way)."""
    for spec in specs:
        same = [s for s in METRICS if s.name == spec.name]
        if same and same[0] != spec:
            raise ValueError(f"metric {spec.name!r} is declared twice, differently: {same[0]} and {spec}.")
        if not same:
            METRICS.append(spec)


def evaluate(inputs: EvalInputs) -> dict[str, float]:
    """Every registered report whose inputs this cell has, in registration order; one flat dict."""
    out: dict[str, float] = {}
    for report in REPORTS.values():
        if all(getattr(inputs, field) is not None for field in report.needs):
            out.update(report.fn(inputs))
    return out


def metric_spec(name: str, extra: Iterable[MetricSpec] = ()) -> MetricSpec | None:
    """The spec of ``name``: an exact declaration first, then a family pattern; None when undeclared."""
    specs = [*METRICS, *extra]
    for spec in specs:
        if spec.name == name:
            return spec
    return next((spec for spec in specs if spec.matches(name)), None)


def known_metric_specs(methods: Iterable[Any] = ()) -> list[MetricSpec]:
    """The registered metrics and the declared ``extra_metrics`` of the method classes ``methods``."""
    specs = list(METRICS)
    for cls in methods:
        specs.extend(getattr(cls, "extra_metrics", ()))
    return specs


def check_metric_name(name: str, where: str, methods: Iterable[Any] = ()) -> MetricSpec:
    """The spec of ``name`` (among the registered metrics and ``methods``' own), or a ValueError naming
    ``where`` it was written and the closest declared names."""
    specs = known_metric_specs(methods)
    spec = metric_spec(name, specs)
    if spec is None:
        names = sorted({s.name for s in specs})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{where}: unknown metric {name!r}.{hint} Declared metrics: {', '.join(names)}.")
    return spec


def headline_specs() -> list[MetricSpec]:
    """The run summary's columns, in order."""
    return sorted((s for s in METRICS if s.headline is not None), key=lambda s: s.headline)
