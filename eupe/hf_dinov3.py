"""DINOv3 ViTs in Hugging Face transformers' layout (``DINOv3ViTModel``) as timm ``Eva`` models.

RAP's checkpoints hold DINOv3 ViT-H+/16 in transformers' names, and ``facebook/dinov3-*`` snapshots on the hub
are in that layout too. This module builds timm's DINOv3 ``Eva`` from a ``DINOv3ViTConfig`` (a dict, a
``config.json`` or a snapshot directory) and maps the state dict both ways, so the same numbers come out as
transformers' ``last_hidden_state`` (final LayerNorm applied; CLS, registers, then patches).

    >>> model = load_hf_dinov3("/data/dinov3-vith16plus-pretrain-lvd1689m")   # config.json + model.safetensors
    >>> model = load_hf_dinov3(config_dict, state_dict=hf_tensors)

Reference: transformers ``models/dinov3_vit/modeling_dinov3_vit.py`` (4.56+) and timm ``models/eva.py``.
"""
from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.layers import LayerNorm
from timm.models.eva import Eva
from torch import nn

log = logging.getLogger(__name__)

# facebook/dinov3-vith16plus-pretrain-lvd1689m config.json: the backbone inside RAP-DINO.
DINOV3_VITH16PLUS_CONFIG: dict[str, Any] = {
    "model_type": "dinov3_vit",
    "architectures": ["DINOv3ViTModel"],
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "silu",
    "use_gated_mlp": True,
    "num_register_tokens": 4,
    "patch_size": 16,
    "image_size": 224,
    "num_channels": 3,
    "layer_norm_eps": 1e-5,
    "layerscale_value": 1.0,
    "query_bias": True,
    "key_bias": False,
    "value_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "rope_theta": 100.0,
    "pos_embed_shift": None,
    "pos_embed_jitter": None,
    "pos_embed_rescale": 2.0,
    "attention_dropout": 0.0,
    "drop_path_rate": 0.0,
}

# transformers' DINOv3ViTConfig defaults for keys a config.json may leave out.
_HF_DEFAULTS: dict[str, Any] = {
    "patch_size": 16, "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12,
    "num_attention_heads": 6, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "rope_theta": 100.0,
    "image_size": 224, "num_channels": 3, "query_bias": True, "key_bias": False, "value_bias": True,
    "proj_bias": True, "mlp_bias": True, "layerscale_value": 1.0, "drop_path_rate": 0.0,
    "use_gated_mlp": False, "num_register_tokens": 0, "pos_embed_shift": None, "pos_embed_jitter": None,
    "pos_embed_rescale": 2.0,
}

SNAPSHOT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers 5.x nests the encoder of DINOv3ViTModel under ``model.``
_V5_PREFIX = "model."


class HFCheckpointError(KeyError):
    """A transformers-layout DINOv3 state dict misses a key, has an unused one, or does not fit its config."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def is_hf_snapshot(path: str | Path) -> bool:
    """True for a directory with transformers' ``config.json`` of a DINOv3 ViT and a weights file."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        return False
    if not any((path / name).is_file() for name in SNAPSHOT_WEIGHT_FILES):
        return False
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return cfg.get("model_type") == "dinov3_vit" or "DINOv3ViTModel" in cfg.get("architectures", [])


def read_hf_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """A ``DINOv3ViTConfig`` as a plain dict with transformers' defaults filled in.

    ``config`` is a dict, a ``config.json`` path, a snapshot directory, an object with ``to_dict()``
    (transformers' config), or None for RAP's DINOv3 ViT-H+/16.
    """
    if config is None:
        raw: dict[str, Any] = dict(DINOV3_VITH16PLUS_CONFIG)
    elif isinstance(config, Mapping):
        raw = dict(config)
    elif hasattr(config, "to_dict"):
        raw = dict(config.to_dict())
    else:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"DINOv3 config not found: {path}; pass a transformers config.json, its "
                                    f"directory, or a dict of DINOv3ViTConfig values")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); expected a transformers DINOv3ViTConfig") from exc
    model_type = raw.get("model_type", "dinov3_vit")
    if model_type != "dinov3_vit":
        raise ValueError(f"config has model_type={model_type!r}; expected 'dinov3_vit' (a DINOv3ViTConfig)")
    return {**_HF_DEFAULTS, **raw}


def timm_kwargs_from_hf_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """timm ``Eva`` constructor arguments equivalent to a transformers ``DINOv3ViTConfig``.

    The model returns the normed CLS token as its pooled output (``global_pool='token'``), has no classifier,
    and accepts any image size that is a multiple of the patch size, like the rest of our backbones.
    """
    cfg = read_hf_config(config)
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if width % heads:
        raise ValueError(f"hidden_size {width} is not divisible by num_attention_heads {heads}")
    if cfg["key_bias"]:
        # timm's DINOv3 attention fixes the key bias at zero; RoPE after a bias is not position-invariant.
        raise NotImplementedError("DINOv3 config has key_bias=true, which timm's Eva cannot represent")
    act = str(cfg["hidden_act"]).lower()
    gated = bool(cfg["use_gated_mlp"])
    if gated and act not in ("silu", "swish"):
        raise NotImplementedError(f"gated MLP with hidden_act={act!r}: timm's SwiGLU uses SiLU only")
    if not gated and act not in ("gelu",):
        raise NotImplementedError(f"MLP with hidden_act={act!r}: timm's Eva MLP uses exact GELU only")
    if cfg["layerscale_value"] is None:
        raise ValueError("DINOv3 config has layerscale_value=None; DINOv3ViTLayer always has layer scale")
    hidden = int(cfg["intermediate_size"])
    return dict(
        img_size=int(cfg["image_size"]),
        patch_size=int(cfg["patch_size"]),
        in_chans=int(cfg["num_channels"]),
        num_classes=0,
        global_pool="token",
        embed_dim=width,
        depth=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        qkv_bias=bool(cfg["query_bias"] or cfg["value_bias"]),
        # +0.5 so that int(width * ratio) in timm recovers the exact hidden width
        mlp_ratio=(hidden + 0.5) / width,
        swiglu_mlp=gated,
        swiglu_align_to=1 if gated else 0,  # split gate/up projections (names map one to one)
        init_values=float(cfg["layerscale_value"]),
        rope_type="dinov3",
        rope_temperature=float(cfg["rope_theta"]),
        use_rot_pos_emb=True,
        use_abs_pos_emb=False,
        rope_rotate_half=True,
        rope_shift_coords=cfg["pos_embed_shift"],
        rope_jitter_coords=cfg["pos_embed_jitter"],
        rope_rescale_coords=cfg["pos_embed_rescale"],
        num_reg_tokens=int(cfg["num_register_tokens"]),
        use_fc_norm=False,
        norm_layer=partial(LayerNorm, eps=float(cfg["layer_norm_eps"])),
        drop_path_rate=float(cfg["drop_path_rate"]),
        attn_drop_rate=float(cfg.get("attention_dropout", 0.0)),
        dynamic_img_size=True,
    )


def build_timm_dinov3(config: Mapping[str, Any] | str | Path | None) -> Eva:
    """An untrained timm ``Eva`` shaped like the given DINOv3ViTConfig."""
    model = Eva(**timm_kwargs_from_hf_config(config))
    model.weights_source = "random"
    return model


def _strip_v5(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(_V5_PREFIX) for k in state):
        return {k[len(_V5_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def hf_to_timm_state_dict(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | str | Path | None, *,
                          key_prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map a transformers DINOv3ViTModel state dict onto timm's ``Eva`` names.

    Args:
        state: HF tensors (4.x names, or 5.x names nested under ``model.``).
        config: the matching DINOv3ViTConfig (see :func:`read_hf_config`).
        key_prefix: prepended to key names in error messages (e.g. where the tensors sit in a RAP checkpoint).

    Returns:
        ``(timm_state, extras)``: extras holds tensors timm has no slot for (``embeddings.mask_token``,
        used only in DINOv3 pre-training) so that a writer can put them back.

    Raises:
        HFCheckpointError naming the first missing or unused key.
    """
    cfg = read_hf_config(config)
    src = _strip_v5(state)
    if state and len(src) and next(iter(state)) not in src:
        key_prefix += _V5_PREFIX  # name keys as the file spells them
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise HFCheckpointError(f"DINOv3 checkpoint is missing key {key_prefix}{name} (config: width "
                                    f"{cfg['hidden_size']}, depth {cfg['num_hidden_layers']}); the file does not "
                                    f"fit this DINOv3ViTConfig")
        used.add(name)
        return src[name]

    def maybe(name: str, like: torch.Tensor, rows: int) -> torch.Tensor:
        # a bias the config leaves out is an exact zero in timm's always-biased layer
        return take(name) if name in src else like.new_zeros(rows)

    width = int(cfg["hidden_size"])
    out: dict[str, torch.Tensor] = {
        "cls_token": take("embeddings.cls_token"),
        "patch_embed.proj.weight": take("embeddings.patch_embeddings.weight"),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.bias"),
        "norm.weight": take("norm.weight"),
        "norm.bias": take("norm.bias"),
    }
    if int(cfg["num_register_tokens"]):
        out["reg_token"] = take("embeddings.register_tokens")
    elif "embeddings.register_tokens" in src and src["embeddings.register_tokens"].numel() == 0:
        take("embeddings.register_tokens")  # transformers keeps an empty [1, 0, C] parameter
    extras = {}
    if "embeddings.mask_token" in src:
        extras["embeddings.mask_token"] = take("embeddings.mask_token")
    qkv_bias = bool(cfg["query_bias"] or cfg["value_bias"])
    for i in range(int(cfg["num_hidden_layers"])):
        h, t = f"layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            out[t + n + ".weight"] = take(h + n + ".weight")
            out[t + n + ".bias"] = take(h + n + ".bias")
        q, k, v = (take(h + f"attention.{p}_proj.weight") for p in "qkv")
        out[t + "attn.qkv.weight"] = torch.cat([q, k, v], dim=0)
        if qkv_bias:
            out[t + "attn.q_bias"] = maybe(h + "attention.q_proj.bias", q, width)
            out[t + "attn.v_bias"] = maybe(h + "attention.v_proj.bias", v, width)
        o = take(h + "attention.o_proj.weight")
        out[t + "attn.proj.weight"] = o
        out[t + "attn.proj.bias"] = maybe(h + "attention.o_proj.bias", o, width)
        out[t + "gamma_1"] = take(h + "layer_scale1.lambda1")
        out[t + "gamma_2"] = take(h + "layer_scale2.lambda1")
        names = ({"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"} if cfg["use_gated_mlp"]
                 else {"up_proj": "fc1", "down_proj": "fc2"})
        for hn, tn in names.items():
            w = take(h + f"mlp.{hn}.weight")
            out[t + f"mlp.{tn}.weight"] = w
            out[t + f"mlp.{tn}.bias"] = maybe(h + f"mlp.{hn}.bias", w, w.shape[0])
    unused = sorted(set(src) - used)
    if unused:
        raise HFCheckpointError(f"DINOv3 checkpoint has unused key {key_prefix}{unused[0]}"
                                + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else "")
                                + "; it does not fit this DINOv3ViTConfig (check depth / register tokens / MLP type)")
    return out, extras


def timm_to_hf_state_dict(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | str | Path | None, *,
                          extras: Mapping[str, torch.Tensor] | None = None, nest_v5: bool = False
                          ) -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_to_timm_state_dict`: timm ``Eva`` tensors -> transformers DINOv3ViTModel names.

    Biases the config leaves out are dropped (they are zero in timm). ``embeddings.mask_token`` comes from
    ``extras`` or is zero (transformers' initialisation). ``nest_v5`` writes transformers 5.x names.
    """
    cfg = read_hf_config(config)
    width = int(cfg["hidden_size"])
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": (extras or {}).get("embeddings.mask_token",
                                                    state["cls_token"].new_zeros(1, 1, width)),
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
    }
    out["embeddings.register_tokens"] = (state["reg_token"] if int(cfg["num_register_tokens"])
                                         else state["cls_token"].new_zeros(1, 0, width))
    for i in range(int(cfg["num_hidden_layers"])):
        h, t = f"layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            out[h + n + ".weight"] = state[t + n + ".weight"]
            out[h + n + ".bias"] = state[t + n + ".bias"]
        q, k, v = state[t + "attn.qkv.weight"].chunk(3, dim=0)
        out[h + "attention.q_proj.weight"] = q
        out[h + "attention.k_proj.weight"] = k
        out[h + "attention.v_proj.weight"] = v
        # timm DINOv3 variants without qkv bias (vit_*_dinov3) are exact with zero biases
        if cfg["query_bias"]:
            out[h + "attention.q_proj.bias"] = state.get(t + "attn.q_bias", q.new_zeros(width))
        if cfg["value_bias"]:
            out[h + "attention.v_proj.bias"] = state.get(t + "attn.v_bias", v.new_zeros(width))
        out[h + "attention.o_proj.weight"] = state[t + "attn.proj.weight"]
        if cfg["proj_bias"]:
            out[h + "attention.o_proj.bias"] = state[t + "attn.proj.bias"]
        out[h + "layer_scale1.lambda1"] = state[t + "gamma_1"]
        out[h + "layer_scale2.lambda1"] = state[t + "gamma_2"]
        names = ({"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"} if cfg["use_gated_mlp"]
                 else {"up_proj": "fc1", "down_proj": "fc2"})
        for hn, tn in names.items():
            out[h + f"mlp.{hn}.weight"] = state[t + f"mlp.{tn}.weight"]
            if cfg["mlp_bias"]:
                out[h + f"mlp.{hn}.bias"] = state[t + f"mlp.{tn}.bias"]
    out["norm.weight"] = state["norm.weight"]
    out["norm.bias"] = state["norm.bias"]
    if nest_v5:
        out = {_V5_PREFIX + k: v for k, v in out.items()}
    return out


def _read_snapshot_weights(path: Path) -> dict[str, torch.Tensor]:
    for name in SNAPSHOT_WEIGHT_FILES:
        file = path / name
        if file.is_file():
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(file), device="cpu")
            return torch.load(file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} has no {' or '.join(SNAPSHOT_WEIGHT_FILES)}; download the full "
                            f"transformers snapshot of the model")


def load_hf_dinov3(dir_or_config: Mapping[str, Any] | str | Path | None,
                   state_dict: Mapping[str, torch.Tensor] | None = None, *, key_prefix: str = "") -> Eva:
    """Build timm's DINOv3 ``Eva`` from a transformers config and load transformers-layout weights.

    Args:
        dir_or_config: a snapshot directory (``config.json`` + ``model.safetensors``), a ``config.json``
            path, a config dict, or None (RAP's DINOv3 ViT-H+/16).
        state_dict: HF-layout tensors; when None and ``dir_or_config`` is a snapshot directory its weights
            are read, otherwise the model stays random (``weights_source == "random"``).
        key_prefix: prepended to key names in error messages.

    Returns:
        The timm model in eval mode with ``weights_source`` set and ``hf_extras`` holding tensors timm has no
        slot for (the pre-training mask token).
    """
    model = build_timm_dinov3(dir_or_config)
    source = "random"
    if state_dict is None and dir_or_config is not None and not isinstance(dir_or_config, Mapping):
        path = Path(dir_or_config)
        if path.is_dir():
            state_dict = _read_snapshot_weights(path)
            source = str(path)
    if state_dict is not None:
        mapped, extras = hf_to_timm_state_dict(state_dict, dir_or_config, key_prefix=key_prefix)
        own = model.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in mapped.items() if own[k].shape != v.shape]
        if bad:
            raise HFCheckpointError(f"DINOv3 weights do not fit the config: {bad[0]}"
                                    + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if "rope" not in k]  # RoPE periods are computed, never stored
        if missing or unexpected:
            raise HFCheckpointError(f"timm DINOv3 left keys unfilled {missing[:4]} / unexpected {unexpected[:4]}")
        model.hf_extras = extras
        if source == "random":
            source = "state_dict"
    model.weights_source = source
    return model.eval()


def create_timm_dinov3_from_hf(path_or_config: Mapping[str, Any] | str | Path | None,
                               state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Alias of :func:`load_hf_dinov3` under the name ``eupe.models`` calls for transformers snapshots."""
    return load_hf_dinov3(path_or_config, state_dict)
