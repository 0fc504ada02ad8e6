"""Declared parameters (``Param``): one declaration language for method parameters and dataset options.

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
