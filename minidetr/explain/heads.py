"""Heads: how spread out each one looks (entropy), how much a score needs it, and what removing
it does.

Michel et al. gate every head's output with xi_h and call |dy/dxi_h| at xi = 1 the
head's importance. No gate is needed here: head h's output is sum_k A_hk v_k, so

    dy/dxi_h = sum_{q, k} A[h, q, k] dy/dA[h, q, k]

(for deformable attention the sum runs over the samples), which the captured maps
and gradients give directly. Ablation removes the head for real: zeroing the rows
of the value projection that feed head h makes its values, hence its output, zero.

Shapes: B batch, M heads, Q queries, L levels, P points, D width, Dh = D / M.
Michel, Levy & Neubig, "Are Sixteen Heads Really Better than One?" (NeurIPS 2019).
"""

from __future__ import annotations

import numpy as np

from minidetr.backend import Array, namespace, to_numpy
from minidetr.explain.capture import AttentionMap
from minidetr.explain.rollout import attention_entropy


def head_gate_gradient(m: AttentionMap, grad: Array) -> np.ndarray:
    """dy/dxi (B, M): the gradient of the score with respect to a gate on each head's output."""
    xp = namespace(m.weights, grad)
    prod = m.weights * grad
    axes = (2, 3) if m.kind == "dense" else (1, 3, 4)  # (B, M, Lq, Lk) or (B, Q, M, L, P)
    return to_numpy(xp.sum(prod, axis=axes))


def head_entropy(m: AttentionMap) -> np.ndarray:
    """Mean entropy per head (M,) in nats, over images and queries; over the L * P samples of a
    deformable head."""
    w = m.weights
    if m.kind == "deformable":
        xp = namespace(w)
        b, q, heads = w.shape[:3]
        h = attention_entropy(xp.reshape(w, (b, q, heads, -1)))  # (B, Q, M)
        return to_numpy(h).mean(axis=(0, 1))
    return to_numpy(attention_entropy(w)).mean(axis=(0, 2))  # (B, M, Lq) -> (M,)


def ablate_head(params: dict, name: str, head: int, num_heads: int) -> dict:
    """A copy of ``params`` in which head ``head`` of the attention ``name`` outputs zero.

    Dense attention: the head's rows of the value part of ``in_proj``; deformable
    attention: its rows of ``value_proj``. Other arrays are shared, not copied.
    """
    if not 0 <= head < num_heads:
        raise ValueError(f"head must be in [0, {num_heads}), got {head}")
    dense = f"{name}.in_proj.weight" in params
    key = f"{name}.in_proj" if dense else f"{name}.value_proj"
    if f"{key}.weight" not in params:
        raise ValueError(f"params hold no attention called {name!r}")
    w, b = params[f"{key}.weight"], params[f"{key}.bias"]
    xp = namespace(w)
    d = w.shape[1]
    dh = d // num_heads
    start = (2 * d if dense else 0) + head * dh  # value rows follow the q and k rows in in_proj
    rows = xp.arange(w.shape[0], device=w.device)
    keep = (rows < start) | (rows >= start + dh)  # (rows,)
    out = dict(params)
    out[f"{key}.weight"] = xp.where(keep[:, None], w, xp.zeros_like(w))
    out[f"{key}.bias"] = xp.where(keep, b, xp.zeros_like(b))
    return out
