"""Checkpoint files: transformers' safetensors folder (read with NumPy) and the official .pth."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_interop_detr import TOL, images, run_hf, run_mini, tiny_detr  # noqa: E402

from minidetr.interop.checkpoints import load_checkpoint  # noqa: E402


def test_safetensors_folder_reads_without_torch_tensors(tmp_path):
    model = tiny_detr("bottleneck", seed=2)
    model.save_pretrained(tmp_path / "detr")
    assert (tmp_path / "detr" / "model.safetensors").exists()
    cfg, params = load_checkpoint(tmp_path / "detr", image_size=64)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in params.values())
    x = images(3)
    want, got = run_hf(model, x), run_mini(cfg, params, x)
    assert np.abs(want[0] - got[0]).max() < TOL and np.abs(want[1] - got[1]).max() < TOL


def test_safetensors_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="model.safetensors: no such file"):
        load_checkpoint(tmp_path)
    model = tiny_detr()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "yolos"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'yolos' is not 'detr'"):
        load_checkpoint(tmp_path / "m")


# transformers' names -> facebookresearch/detr's (models/detr.py, transformer.py, backbone.py)
def _official(name: str) -> str | None:
    rules = [
        (r"model\.backbone\.model\.embedder\.embedder\.convolution\.", "backbone.0.body.conv1."),
        (r"model\.backbone\.model\.embedder\.embedder\.normalization\.", "backbone.0.body.bn1."),
        (
            r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\."
            r"(convolution|normalization)\.",
            lambda m: (
                f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}."
                f"{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}."
            ),
        ),
        (
            r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\."
            r"(convolution|normalization)\.",
            lambda m: (
                f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample."
                f"{0 if m[3] == 'convolution' else 1}."
            ),
        ),
        (r"model\.input_projection\.", "input_proj."),
        (r"model\.query_position_embeddings\.", "query_embed."),
        (r"class_labels_classifier\.", "class_embed."),
        (r"bbox_predictor\.", "bbox_embed."),
        (r"model\.decoder\.layernorm\.", "transformer.decoder.norm."),
        (r"model\.(encoder|decoder)\.layers\.", r"transformer.\1.layers."),
    ]
    for pattern, repl in rules:
        name, n = re.subn("^" + pattern, repl, name)
        if n and not name.startswith("transformer."):
            return name
        if n:
            break
    for a, b in [("encoder_attn.", "multihead_attn."), ("o_proj", "out_proj"),
                 ("self_attn_layer_norm", "norm1"), ("mlp.fc1", "linear1"),
                 ("mlp.fc2", "linear2")]:  # fmt: skip
        name = name.replace(a, b)
    dec = name.startswith("transformer.decoder")
    name = name.replace("encoder_attn_layer_norm", "norm2")
    name = name.replace("final_layer_norm", "norm3" if dec else "norm2")
    return name


def test_official_pth_layout(tmp_path):
    model = tiny_detr("bottleneck", seed=6)
    state = {k: v for k, v in model.state_dict().items() if "num_batches" not in k}
    official = {}
    for k, v in state.items():
        name = _official(k)
        m = re.match(r"(.*self_attn|.*multihead_attn)\.([qkv])_proj\.(weight|bias)$", name)
        if m:  # nn.MultiheadAttention stacks q, k, v
            key = f"{m[1]}.in_proj_{m[3]}"
            official.setdefault(key, {})[m[2]] = v
        else:
            official[name] = v
    for k, parts in list(official.items()):
        if isinstance(parts, dict):
            official[k] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    torch.save({"model": official}, tmp_path / "detr.pth")
    cfg, params = load_checkpoint(tmp_path / "detr.pth", image_size=64, num_heads=4)
    assert (cfg.d_model, cfg.num_encoder_layers, cfg.num_queries) == (32, 2, 6)  # from shapes
    x = images(4)
    want, got = run_hf(model, x), run_mini(cfg, params, x)
    assert np.abs(want[0] - got[0]).max() < TOL and np.abs(want[1] - got[1]).max() < TOL
