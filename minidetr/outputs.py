"""The typed boundary between the model and the set loss.

A DETR decoder answers with one class-and-box prediction per query and per decoder
layer, for several groups of queries that the loss treats differently:

* ``"main"``: the Q matching queries, one :class:`Predictions` per decoder layer
  (first to last); the last layer is DETR's ``pred_logits`` / ``pred_boxes``, the
  others its ``aux_outputs``. Matched to the targets by the Hungarian algorithm.
* ``"enc"``: two-stage proposals, one entry (DINO's "interm" outputs, DETR's
  ``enc_outputs``), matched like a decoder layer.
* ``"dn"``: the Qdn denoising queries, one entry per decoder layer; ``meta`` is the
  :class:`~minidetr.setloss.denoising.DenoisingQueries` they were made from, which
  fixes each query's target without matching.

A new kind of query (track queries that keep an object's identity from frame to
frame) is one more named group with its own ``meta``. :class:`SetOutputs` holds the
groups; the criterion iterates them by name and layer index, and its backward
returns gradients in the same structure, which the model's backward consumes.
DETR's names stay available as properties and through :meth:`SetOutputs.to_dict` /
:meth:`SetOutputs.from_dict`, for users and lessons that know DETR's ``outputs`` dict.

Shapes: B images, Q queries of a group, K logits (C + 1 with softmax, C with focal).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from minidetr.backend import Array

MAIN, ENC, DN = "main", "enc", "dn"
_DETR_KEYS = ("pred_logits", "pred_boxes", "aux_outputs", "enc_outputs", "dn")


class Predictions(NamedTuple):
    """One decoder layer's answer for one group of queries."""

    logits: Array  # (B, Q, K)
    boxes: Array  # (B, Q, 4) cxcywh in [0, 1]


class QueryGroup(NamedTuple):
    """One group of queries: its predictions per decoder layer, and what its loss needs."""

    layers: tuple[Predictions, ...]  # first to last decoder layer (one entry for proposals)
    meta: Any = None  # e.g. DenoisingQueries for "dn"; None for matched groups


class SetOutputs:
    """Every prediction of a forward pass, by query group; immutable.

    ``SetOutputs({"main": QueryGroup((Predictions(logits, boxes), ...)), ...})``.
    The same structure carries gradients (criterion backward -> model backward),
    where a ``None`` array, a missing layer list or a missing group means zero.
    """

    __slots__ = ("_groups",)

    def __init__(self, groups: Mapping[str, QueryGroup]) -> None:
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must be a mapping of name -> QueryGroup, got {groups!r}")
        for name, group in groups.items():
            if not isinstance(group, QueryGroup):
                raise TypeError(
                    f"groups[{name!r}] must be a QueryGroup, got {type(group).__name__}"
                )
            for i, layer in enumerate(group.layers):
                if not isinstance(layer, Predictions):
                    raise TypeError(
                        f"groups[{name!r}].layers[{i}] must be Predictions, "
                        f"got {type(layer).__name__}"
                    )
        if MAIN not in groups or not groups[MAIN].layers:
            raise ValueError("outputs need a 'main' group with at least one decoder layer")
        self._groups = MappingProxyType(dict(groups))

    @property
    def groups(self) -> Mapping[str, QueryGroup]:
        return self._groups

    def __iter__(self) -> Iterator[tuple[str, QueryGroup]]:
        return iter(self._groups.items())

    def __contains__(self, name: object) -> bool:
        """A group name ("main", "enc", "dn", ...) or a DETR key present ("enc_outputs", ...)."""
        if name in self._groups:
            return True
        present = {"enc_outputs": ENC, "dn": DN}  # the others are always there
        return name in _DETR_KEYS and present.get(name, MAIN) in self._groups

    def __getitem__(self, key: str) -> Any:
        """DETR's ``outputs[key]`` for key in pred_logits, pred_boxes, aux_outputs,
        enc_outputs, dn (read-only; the groups are the data)."""
        if key not in _DETR_KEYS:
            raise KeyError(f"{key!r}: DETR's outputs keys are {', '.join(_DETR_KEYS)}")
        if key not in self:
            raise KeyError(f"{key!r}: these outputs have no such group")
        if key == "dn":
            return self._dn_dict()
        return getattr(self, key)  # one entry, not the whole dict

    def group(self, name: str) -> QueryGroup | None:
        return self._groups.get(name)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {len(g.layers)} layer(s)" for k, g in self._groups.items())
        return f"SetOutputs({parts})"

    # ------------------------------------------------------------------ DETR's names

    @property
    def final(self) -> Predictions:
        """The last decoder layer's predictions for the matching queries."""
        return self._groups[MAIN].layers[-1]

    @property
    def pred_logits(self) -> Array:
        return self.final.logits

    @property
    def pred_boxes(self) -> Array:
        return self.final.boxes

    @property
    def aux_outputs(self) -> list[dict]:
        return [_layer_dict(p) for p in self._groups[MAIN].layers[:-1]]

    @property
    def enc_outputs(self) -> dict | None:
        enc = self._groups.get(ENC)
        return None if enc is None else _layer_dict(enc.layers[-1])

    def to_dict(self) -> dict:
        """DETR's ``outputs`` dict: pred_logits, pred_boxes, aux_outputs, enc_outputs, dn."""
        out: dict = {**_layer_dict(self.final), "aux_outputs": self.aux_outputs}
        if ENC in self._groups:
            out["enc_outputs"] = self.enc_outputs
        if DN in self._groups:
            out["dn"] = self._dn_dict()
        return out

    def _dn_dict(self) -> dict | None:
        dn = self._groups.get(DN)
        if dn is None:
            return None
        layers = [_layer_dict(p) for p in dn.layers]
        return {**layers[-1], "aux_outputs": layers[:-1], "meta": dn.meta}

    @classmethod
    def from_dict(cls, outputs: Mapping) -> SetOutputs:
        """Read DETR's ``outputs`` dict (the keys of :meth:`to_dict`; aux and dn optional).

        A gradient dict may leave entries out (zero gradient): a missing array becomes None.
        """
        if isinstance(outputs, SetOutputs):
            return outputs
        if not isinstance(outputs, Mapping):
            raise TypeError(f"outputs must be a dict or SetOutputs, got {type(outputs).__name__}")
        known = {"pred_logits", "pred_boxes", "aux_outputs", "enc_outputs", "dn"}
        unknown = sorted(set(outputs) - known)
        if unknown:
            raise ValueError(
                f"outputs has unknown keys {unknown}; expected some of {sorted(known)}"
            )
        groups = {MAIN: QueryGroup(_layers_from(outputs, "outputs"))}
        enc = outputs.get("enc_outputs")
        if enc is not None:
            groups[ENC] = QueryGroup((_predictions(enc, "outputs['enc_outputs']"),))
        dn = outputs.get("dn")
        if dn is not None:
            if not isinstance(dn, Mapping):
                raise TypeError(f"outputs['dn'] must be a dict, got {type(dn).__name__}")
            extra = sorted(set(dn) - {"pred_logits", "pred_boxes", "aux_outputs", "meta"})
            if extra:
                raise ValueError(f"outputs['dn'] has unknown keys {extra}")
            groups[DN] = QueryGroup(_layers_from(dn, "outputs['dn']"), dn.get("meta"))
        return cls(groups)


def _layer_dict(p: Predictions) -> dict:
    return {"pred_logits": p.logits, "pred_boxes": p.boxes}


def _predictions(d: Any, where: str, *, layer: bool = True) -> Predictions:
    """The pair of a layer dict; ``layer``: a plain layer, holding nothing else."""
    if not isinstance(d, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(d).__name__}")
    extra = sorted(set(d) - {"pred_logits", "pred_boxes"}) if layer else []
    if extra:
        raise ValueError(f"{where} has unknown keys {extra}")
    return Predictions(d.get("pred_logits"), d.get("pred_boxes"))


def _layers_from(d: Mapping, where: str) -> tuple[Predictions, ...]:
    """aux_outputs (first layers) then the top level (last layer)."""
    aux = d.get("aux_outputs") or []
    if not isinstance(aux, (list, tuple)):
        raise TypeError(f"{where}['aux_outputs'] must be a list of dicts, got {type(aux).__name__}")
    layers = [_predictions(a, f"{where}['aux_outputs'][{i}]") for i, a in enumerate(aux)]
    return (*layers, _predictions(d, where, layer=False))
