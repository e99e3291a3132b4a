"""ResNet backbone: frozen BatchNorm, max pooling and the blocks; gradients, oracles, properties."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.gradcheck import gradcheck
from minidetr.model.resnet import (
    frozen_batchnorm_backward,
    frozen_batchnorm_forward,
    init_resnet,
    is_frozen,
    resnet_backward,
    resnet_forward,
)
from minidetr.ops.pool import max_pool2d_backward, max_pool2d_forward

TOL = 1e-7


def _spec(block: str, levels: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        resnet_block=block,
        resnet_stem=8,
        backbone_channels=(8, 16, 16) if block == "basic" else (8, 16, 32),
        backbone_blocks=(1, 2, 1),
        backbone_levels=levels,
    )


def _perturbed(params: dict, rng: np.random.Generator) -> dict:
    """Every value moved off its initial one, BatchNorm statistics included (variance > 0)."""
    out = {}
    for k, v in params.items():
        if k.endswith("running_var"):
            out[k] = rng.uniform(0.5, 2.0, v.shape)
        elif k.endswith(".bn.weight"):
            out[k] = rng.uniform(0.5, 1.5, v.shape)
        else:
            out[k] = v + 0.1 * rng.standard_normal(v.shape)
    return out


def test_frozen_batchnorm_input_gradient(xp, rng):
    c = 3
    x = xp.asarray(rng.standard_normal((2, c, 4, 5)))
    stats = [xp.asarray(a) for a in (rng.uniform(0.5, 2, c), rng.standard_normal(c))]
    stats += [xp.asarray(rng.standard_normal(c)), xp.asarray(rng.uniform(0.5, 2, c))]
    res = gradcheck(frozen_batchnorm_forward, frozen_batchnorm_backward, [x, *stats], wrt=[0])
    assert res.max_error < TOL


def test_frozen_batchnorm_matches_normalising_by_the_statistics(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    m, v = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y, _ = frozen_batchnorm_forward(x, w, b, m, v)
    want = (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * w[:, None, None]
    np.testing.assert_allclose(y, want + b[:, None, None], rtol=1e-12, atol=1e-12)


def test_frozen_batchnorm_rejects_wrong_statistics(rng):
    with pytest.raises(ValueError, match="running_mean must have shape"):
        frozen_batchnorm_forward(
            rng.standard_normal((1, 3, 2, 2)), np.ones(3), np.zeros(3), np.zeros(4), np.ones(3)
        )


def _max_pool_brute(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    b, c, h, w = x.shape
    xpad = np.full((b, c, h + 2 * p, w + 2 * p), -np.inf)
    xpad[:, :, p : p + h, p : p + w] = x
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((b, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = xpad[:, :, s * i : s * i + k, s * j : s * j + k].max(axis=(2, 3))
    return out


@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.sampled_from([1, 2, 3]),
    s=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_max_pool_matches_brute_force(h, w, k, s, seed):
    p = k // 2
    if h + 2 * p < k or w + 2 * p < k:
        return
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w))
    y, cache = max_pool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, _max_pool_brute(x, k, s, p))
    # the gradient of sum(y) counts, for each input, how many windows it won
    (dx,) = max_pool2d_backward(np.ones_like(y), cache)
    assert dx.sum() == pytest.approx(y.size)
    assert np.all(dx >= 0)


def test_max_pool_gradient(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 2, 7, 6)))  # distinct values: no ties
    res = gradcheck(lambda a: max_pool2d_forward(a, 3, 2, 1), max_pool2d_backward, [x])
    assert res.max_error < TOL


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_shapes_and_strides(block, rng):
    spec = _spec(block, levels=3)
    params = init_resnet(spec, rng)
    feats, _ = resnet_forward(params, rng.standard_normal((2, 3, 32, 32)), spec)
    assert [f.shape for f in feats] == [
        (2, c, 32 // st, 32 // st) for c, st in zip(spec.backbone_channels, (4, 8, 16))
    ]
    assert any(is_frozen(k) for k in params)
    assert not any(is_frozen(k) for k in params if k.endswith("conv.weight"))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_gradients(block, rng):
    """Finite differences of the whole backbone, wrt the image and sampled conv weights."""
    spec = _spec(block)
    params = _perturbed(init_resnet(spec, rng), rng)
    images = rng.standard_normal((1, 3, 16, 16))
    names = [
        "backbone.stem.conv.weight",
        "backbone.stages.1.blocks.0.shortcut.conv.weight",
        "backbone.stages.2.blocks.0.convs.1.conv.weight",
    ]

    def forward(img, *weights):
        p = dict(params)
        p.update(zip(names, weights))
        feats, cache = resnet_forward(p, img, spec)
        return np.concatenate([f.reshape(-1) for f in feats]), (cache, feats)

    def backward(dout, state):
        cache, feats = state
        dfeats, start = [], 0
        for f in feats:
            dfeats.append(dout[start : start + f.size].reshape(f.shape))
            start += f.size
        grads: dict = {}
        dimg = resnet_backward(dfeats, cache, grads)
        return (dimg, *(grads[n] for n in names))

    res = gradcheck(forward, backward, [images, *(params[n] for n in names)], max_entries=40)
    assert res.max_error < 1e-6


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_matches_transformers_resnet_backbone(block, rng):
    """The transformers ResNetBackbone with frozen BatchNorm and perturbed weights, both float32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.detr.modeling_detr import replace_batch_norm

    from minidetr.interop.names import RESNET_NAMES, rename

    spec = _spec(block, levels=3)
    hf_cfg = transformers.ResNetConfig(
        embedding_size=spec.resnet_stem,
        hidden_sizes=list(spec.backbone_channels),
        depths=list(spec.backbone_blocks),
        layer_type=block,
        out_features=["stage1", "stage2", "stage3"],
    )
    torch.manual_seed(0)
    hf = transformers.ResNetBackbone(hf_cfg).eval()
    replace_batch_norm(hf)
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("num_batches_tracked")}
    params = {}
    for k, v in state.items():
        value = v.numpy().astype(np.float64)
        if k.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, value.shape)
        else:
            value = value + 0.1 * rng.standard_normal(value.shape)
        state[k] = torch.from_numpy(value.astype(np.float32))
        params["backbone." + rename(k, RESNET_NAMES, to_hf=False)] = value.astype(np.float32)
    assert params.keys() == init_resnet(spec, rng).keys()
    hf.load_state_dict(state)
    images = rng.standard_normal((2, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        want = hf(torch.from_numpy(images)).feature_maps
    feats, _ = resnet_forward(params, images, spec)
    for got, w in zip(feats, want):
        np.testing.assert_allclose(got, w.numpy(), atol=1e-4, rtol=1e-4)
