"""Validate responses against Kraken's published OpenAPI spec (``<shared>/kraken/spot-rest``).

The spec is read where it lies (never copied into the repository). OpenAPI 3.0's ``nullable`` is
turned into JSON Schema's ``[type, "null"]``; ``$ref`` across the spec's YAML files are resolved
with ``referencing``. Two defects of the published spec are worked around, not hidden:

* ``QueryOrders``: the spec's result is ``oneOf`` [open order, closed order] although the result
  is a map txid -> order (and both order schemas accept any object, so ``oneOf`` can never hold):
  each order in the map is validated against the open or closed order schema by its status.
* ``AddOrder``/``CancelOrder``/``CancelAll``: ``error`` is declared as an array of arrays; error
  answers are validated against the common error schema instead.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from engine.errors import InputError
from engine.paths import shared_dir

ENVELOPE = {
    "type": "object",
    "required": ["error", "result"],
    "properties": {"error": {"type": "array", "items": {"type": "string"}}},
}


def spec_dir() -> Path:
    return shared_dir() / "kraken" / "spot-rest"


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items()}
        if out.get("nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


class SpecValidator:
    def __init__(self, root: Path | None = None) -> None:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        self.root = (root or spec_dir()).resolve()
        entry = self.root / "openapi_v3.yaml"
        if not entry.is_file():
            raise InputError(f"Kraken OpenAPI spec not found at {entry} (set KQ_SHARED)")

        @cache
        def load(uri: str):
            path = Path(uri.removeprefix("file://"))
            return Resource.from_contents(_nullable(yaml.safe_load(path.read_text())), default_specification=DRAFT7)

        def retrieve(uri: str):
            return load(uri.split("#")[0])

        self.entry_uri = entry.as_uri()
        # retrieve= is referencing's documented keyword (attrs field ``_retrieve``, alias "retrieve"; 0.37);
        # stub gap: mypy does not see through its @frozen (a legacy __dataclass_transform__ stub), so it
        # finds no __init__ parameters at all
        self.registry = Registry(retrieve=retrieve)  # type: ignore[call-arg]
        self.doc = yaml.safe_load(entry.read_text())

    def _validator(self, ref: str):
        from jsonschema import Draft7Validator

        return Draft7Validator({"$ref": ref}, registry=self.registry)

    def _path_ref(self, endpoint: str) -> str:
        for kind in ("public", "private"):
            p = f"/{kind}/{endpoint}"
            if p in self.doc["paths"]:
                method = "get" if "get" in self.doc["paths"][p] else "post"
                ptr = "/paths/" + p.replace("/", "~1") + f"/{method}/responses/200/content/application~1json/schema"
                return f"{self.entry_uri}#{ptr}"
        raise KeyError(f"endpoint {endpoint!r} not in the spec")

    def errors(self, endpoint: str, body: dict[str, Any]) -> list[str]:
        """Every way ``body`` (a full ``{"error", "result"}`` answer) breaks the spec; [] when valid."""
        from jsonschema import Draft7Validator

        out = [e.message for e in Draft7Validator(ENVELOPE).iter_errors(body)]
        if out:
            return out
        if body["error"]:
            return [
                e.message
                for e in self._validator((self.root / "schemas/objects/errors/error.yaml").as_uri()).iter_errors(
                    body["error"]
                )
            ]
        if endpoint == "QueryOrders":
            for txid, order in body["result"].items():
                which = "open" if order.get("status") in ("pending", "open") else "closed"
                v = self._validator((self.root / f"schemas/objects/user/orders/{which}.yaml").as_uri())
                out += [f"{txid}: {e.message}" for e in v.iter_errors(order)]
            return out
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self._validator(self._path_ref(endpoint)).iter_errors(body)
        ]
