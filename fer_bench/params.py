"""Declared parameters (``Param``): one declaration language for method parameters and dataset options.

A ``Param`` may also declare its tuning range (``search``: a :class:`Space`, e.g. ``log_uniform(1e-4, 1e-2)``),
which ``fer-bench tune`` searches; ``parse_space`` reads the command line's form (``log:1e-4:1e-2``,
``uniform:0:1``, ``int:1:8``, ``choice:a|b``).

A ``Param`` states a default, a type, an interval or a set of allowed values, whether None is allowed and a
docstring; ``check_values`` checks a mapping of given values against declarations in one voice (the
scikit-learn habit): "The 'lr' parameter of baseline must be a float in (0, inf). Got -1 instead."
Strings from the command line are coerced (``"1e-3"`` -> 0.001, ``"none"`` -> None).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np


class ParameterError(ValueError):
    """A bad parameter value or name (a usage error: the CLI exits with code 2)."""


class InvalidValue(ValueError):
    """Raised by ``Param.check`` when its ``validate`` function refuses a value (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Param:
    """A declared parameter: default, type, and an interval or a set of allowed values.

    ``low`` / ``high`` bound numbers (open bounds unless ``closed`` says otherwise: "left", "right",
    "both", "neither"); ``choices`` lists allowed values; ``none_ok`` admits None.
    """

    default: Any
    type: type | tuple[type, ...] = object
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    choices: tuple | None = None
    none_ok: bool = False
    doc: str = ""
    validate: Callable[[Any], None] | None = None   # a further check of the coerced value; raises ValueError(why)
    search: "Space | None" = None                    # the tuning range (fer-bench tune); None: not tuned
    # a parameter added after cells were stored, whose default computes what those cells computed: a cell at
    # the default leaves it out of its id, so committed results keep their ids (fer_bench.runner.CellSpec)
    id_neutral: bool = False

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            tname = {int: "an int", float: "a float", str: "a str", bool: "a bool"}.get(self.type, "a value")
            if isinstance(self.type, tuple):
                tname = " or ".join(t.__name__ for t in self.type)
            text = tname
            if self.low is not None or self.high is not None:
                lo = "-inf" if self.low is None else f"{self.low:g}"
                hi = "inf" if self.high is None else f"{self.high:g}"
                left = "[" if self.closed in ("both", "left") and self.low is not None else "("
                right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
                text += f" in {left}{lo}, {hi}{right}"
        return text + (" or None" if self.none_ok else "")

    def check(self, value: Any) -> Any:
        """The value coerced (int -> float, strings from the command line) or raise ValueError."""
        if self.none_ok and isinstance(value, str) and value.strip().lower() in ("none", "null"):
            value = None
        if value is None:
            if self.none_ok:
                return None
            raise ValueError
        if isinstance(value, str) and self.type is not str and self.choices is None:
            value = parse_scalar(value)
        if self.type is float and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, np.generic):
            value = value.item()
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError
            return value
        if self.type is not object:
            if isinstance(value, bool) and self.type is not bool and (not isinstance(self.type, tuple) or bool not in self.type):
                raise ValueError
            if not isinstance(value, self.type):
                raise ValueError
        if self.low is not None or self.high is not None:
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError
            if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
                raise ValueError
            if self.high is not None and (value > self.high or (value == self.high and self.closed in ("left", "neither"))):
                raise ValueError
        if self.validate is not None:
            try:
                self.validate(value)
            except ValueError as exc:
                raise InvalidValue(str(exc)) from None
        return value


def parse_scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def check_values(declared: Mapping[str, Param], given: Mapping[str, Any], owner: str,
                 noun: str = "parameter", subject: str | None = None) -> dict[str, Any]:
    """Every declared name with its given value (or default) checked and coerced; ``ParameterError`` for an
    unknown name or a bad value. ``owner`` names what the values belong to ("baseline", "dataset 'rafdb'"),
    ``subject`` the same at the start of a sentence (default: ``owner``)."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ParameterError(f"{subject or owner} has no {noun} {unknown[0]!r}; "
                             f"allowed: {', '.join(sorted(declared)) or '(none)'}.")
    out = {}
    for name, spec in declared.items():
        value = given.get(name, spec.default)
        try:
            out[name] = spec.check(value)
        except InvalidValue as exc:                                  # a validator said why
            raise ParameterError(f"The {name!r} {noun} of {owner}: {exc}") from None
        except (ValueError, TypeError):
            raise ParameterError(f"The {name!r} {noun} of {owner} must be {spec.describe()}. "
                                 f"Got {value!r} instead.") from None
    return out


SPACE_KINDS = ("log", "uniform", "int", "choice")


@dataclasses.dataclass(frozen=True)
class Space:
    """A tuning range: ``log`` / ``uniform`` floats in [low, high], ``int`` in [low, high], or ``choice``."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice:" + "|".join(str(c) for c in self.choices)
        return f"{self.kind}:{self.low:g}:{self.high:g}"

    def check(self, name: str, param: Param, owner: str) -> None:
        """Raise ParameterError unless the range is well formed and every value in it is allowed by ``param``."""
        where = f"the search space of {owner}.{name} ({self.describe()})"
        if self.kind not in SPACE_KINDS:
            raise ParameterError(f"{where}: unknown kind {self.kind!r}; allowed: {', '.join(SPACE_KINDS)}.")
        if self.kind == "choice":
            if not self.choices:
                raise ParameterError(f"{where} is empty; give at least one value, e.g. choice:a|b.")
            values = self.choices
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ParameterError(f"{where} is empty or inverted; write low:high with low < high.")
            if self.kind == "log" and self.low <= 0:
                raise ParameterError(f"{where}: a log range needs low > 0.")
            values = (self.low, self.high)
        for value in values:
            try:
                param.check(value)
            except (ValueError, TypeError):
                raise ParameterError(f"{where}: {value!r} is outside what {owner}.{name} allows "
                                     f"({param.describe()}).") from None

    def distribution(self) -> Any:
        """The Optuna distribution of this range."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log")


def log_uniform(low: float, high: float) -> Space:
    return Space("log", float(low), float(high))


def uniform(low: float, high: float) -> Space:
    return Space("uniform", float(low), float(high))


def choice(*values: Any) -> Space:
    return Space("choice", choices=tuple(values))


def parse_space(text: str, param: Param | None = None) -> Space:
    """``log:1e-4:1e-2``, ``uniform:0:1``, ``int:1:8`` or ``choice:a|b|c`` (choice values coerced by ``param``)."""
    kind, _, rest = text.strip().partition(":")
    if kind not in SPACE_KINDS or not rest:
        raise ParameterError(f"search space {text!r} is not one of log:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH, "
                             f"choice:A|B; e.g. log:1e-4:1e-2.")
    if kind == "choice":
        return Space("choice", choices=tuple(_coerce(v, param) for v in rest.split("|") if v != ""))
    low, _, high = rest.partition(":")
    try:
        return Space(kind, float(low), float(high))
    except ValueError:
        raise ParameterError(f"search space {text!r}: LOW and HIGH must be numbers.") from None


def _coerce(text: str, param: Param | None) -> Any:
    """A choice value as ``param`` reads it (``Space.check`` reports one it refuses), else parsed as a scalar."""
    if param is None:
        return parse_scalar(text)
    try:
        return param.check(text)
    except (ValueError, TypeError):
        return text
