"""The base of every config section: :class:`Frozen` (immutable, unknown keys and non-finite
numbers refused).

It lives apart from :mod:`engine.config` so that the section modules (``engine/risk/config.py`` and
so on) and :class:`engine.config.Config`, which types every section, import without a cycle.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer


class Frozen(BaseModel):
    """Base for every config section: immutable, unknown keys rejected, every float finite.

    ``nan``, ``inf`` and ``-inf`` (valid TOML floats) are refused for every float field; a field
    where infinity means "off" says so and opts in with ``Field(allow_inf_nan=True)`` (NaN is then
    still refused by its bound).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _inf_as_text(v: float) -> float | str:
    return "inf" if math.isinf(v) else v


InfOff = Annotated[
    float, Field(allow_inf_nan=True), PlainSerializer(_inf_as_text, return_type=float | str, when_used="json")
]
"""A float field where ``inf`` means "off" (e.g. ``risk.spread_max``): ``inf`` is accepted from TOML
(and as the string ``"inf"``), NaN is still refused by the field's bound, and JSON dumps write
``"inf"`` (a string) so every JSON the system writes stays strict."""
