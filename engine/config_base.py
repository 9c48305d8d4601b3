"""The base of every config section: :class:`Frozen` (immutable, unknown keys and non-finite
numbers refused).

It lives apart from :mod:`engine.config` so that the section modules (``engine/risk/config.py`` and
so on) and :class:`engine.config.Config`, which types every section, import without a cycle.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationInfo, field_validator

# the only strings a float field takes: what a JSON dump writes for an ``InfOff`` field ("inf"); the
# float's own inf/nan rules then decide (refused unless the field opts in)
_INF_TEXT = frozenset({"inf", "+inf", "-inf"})


def _numeric_kind(ann: Any) -> str | None:
    """ "int" / "float" for an int or float annotation (also ``X | None``), "seq" for a tuple/list of
    them, else None (str, bool, Decimal, Literal, models, unions with str: left to pydantic)."""
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Annotated:
        return _numeric_kind(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (tuple, list) and args:
        kinds = {_numeric_kind(a) for a in args if a is not Ellipsis}
        return "seq" if kinds and kinds <= {"int", "float"} else None
    return None


def _refuse_loose(v: Any, kind: str) -> None:
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not a boolean ({str(v).lower()})")
    if isinstance(v, str) and not (kind == "float" and v.strip().lower() in _INF_TEXT):
        raise ValueError(f"must be a number, not a string ({v[:40]!r})")


class Frozen(BaseModel):
    """Base for every config section: immutable, unknown keys rejected, every float finite, numbers
    strict.

    ``nan``, ``inf`` and ``-inf`` (valid TOML floats) are refused for every float field; a field
    where infinity means "off" says so and opts in with ``Field(allow_inf_nan=True)`` (NaN is then
    still refused by its bound).

    An int or float field (or a list of them) refuses booleans and strings, which pydantic's lax mode
    would turn into numbers (``max_positions = true`` -> 1, ``max_exposure = "0.5"`` -> 0.5): a typo
    or a quoted number is an error naming the key. An int stays allowed for a float field (TOML
    writes ``1`` for ``1.0``); ``"inf"`` is the one string a float field takes (what JSON dumps write
    for an :data:`InfOff` field), still refused unless the field opts in to infinity.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        f = cls.model_fields.get(info.field_name or "")
        kind = _numeric_kind(f.annotation) if f is not None else None
        if kind is None:
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"must be true or false, not {type(v).__name__} ({str(v)[:40]!r})")
            return v
        if kind == "seq":
            if isinstance(v, (list, tuple)):
                for x in v:
                    _refuse_loose(x, "float")
            return v
        _refuse_loose(v, kind)
        return v


def _inf_as_text(v: float) -> float | str:
    return "inf" if math.isinf(v) else v


InfOff = Annotated[
    float, Field(allow_inf_nan=True), PlainSerializer(_inf_as_text, return_type=float | str, when_used="json")
]
"""A float field where ``inf`` means "off" (e.g. ``risk.spread_max``): ``inf`` is accepted from TOML
(and as the string ``"inf"``), NaN is still refused by the field's bound, and JSON dumps write
``"inf"`` (a string) so every JSON the system writes stays strict."""
