"""RAP's released Lightning checkpoints <-> our planner, by an explicit key table.

RAP (vita-epfl/RAP 5fd8630) saves ``{"state_dict": {"agent._rap_model.<key>": tensor}}``. Its DINOv3 sits in
transformers' layout under ``_backbone.img_backbone.`` (see :mod:`eupe.hf_dinov3`); its one trajectory refiner
is stored four times (``_trajectory_head.{0..3}``, one tied module); its BEVFormer encoder carries four fixed
geometry tensors that the proposal-query forward never reads. Everything else maps one to one (table below).

    >>> planner = load_rap_checkpoint("rap.ckpt")                               # DINOv3 ViT-H+/16 inside
    >>> planner = load_rap_checkpoint("rap_dev.ckpt", backbone_config="backbone_config.json")
    >>> save_rap_checkpoint(planner, "back_to_rap.ckpt")                        # loads into RAP strictly

Evaluating RAP's released checkpoint with our scorer (RAP's input size, its DINOv3 comes from the checkpoint):

    python navsim_agents/run_pdm_score.py agent=rap agent.checkpoint=/path/to/rap.ckpt backbone=dinov3-h
        planner=rap_paper agent.image_scale=0.4   (one command line)

Our own training checkpoints (Lightning, planner under an ``agent.`` prefix, timm backbone names) load with
:func:`load_planner_checkpoint`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from eupe.hf_dinov3 import hf_to_timm_state_dict, load_hf_dinov3, read_hf_config, timm_to_hf_state_dict
from rap_backbone.planner import PlannerConfig, RAPPlanner

log = logging.getLogger(__name__)

RAP_PREFIX = "agent._rap_model."
RAP_BACKBONE = "_backbone.img_backbone."
RAP_HEAD = "_trajectory_head."
RAP_REFINER_GEOMETRY = ("reference_points", "ref_3d", "hybird_ref_2d", "ref_2d")  # encoder.py, unused in forward
MLP_INDICES = (0, 1, 3, 4, 6)  # transformer_decoder.py MLP: Linear, LN, ReLU, Linear, LN, ReLU, Linear
DEFORMABLE_PARTS = ("sampling_offsets", "attention_weights", "value_proj")


class CheckpointKeyError(KeyError):
    """A checkpoint key is missing, unused, or inconsistent; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------------
# The key table
# ---------------------------------------------------------------------------------------------------

def _wb(ours: str, rap: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{rap}.weight", f"{ours}.bias": f"{rap}.bias"}


def _mlp(ours: str, rap: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for j in MLP_INDICES:
        table.update(_wb(f"{ours}.mlp.{j}", f"{rap}.mlp.{j}"))
    return table


def refiner_key_table(cfg: PlannerConfig) -> dict[str, str]:
    """Our ``refiner.*`` names -> RAP's names relative to one ``_trajectory_head.{r}.``."""
    bev = "Bev_refiner.bev_decoder.layers"
    t: dict[str, str] = {
        "refiner.pos_pose.weight": "Bev_refiner.positional_encoding.col_embed.weight",
        "refiner.pos_proposal.weight": "Bev_refiner.positional_encoding.row_embed.weight",
        **_mlp("refiner.decoder", "traj_decoder"),
    }
    for i in range(cfg.num_bev_layers):
        ours, rap = f"refiner.layers.{i}", f"{bev}.{i}"
        for part in (*DEFORMABLE_PARTS, "output_proj"):
            t.update(_wb(f"{ours}.self_attn.{part}", f"{rap}.attentions.0.{part}"))
        for part in DEFORMABLE_PARTS:
            t.update(_wb(f"{ours}.cross_attn.{part}", f"{rap}.attentions.1.deformable_attention.{part}"))
        t.update(_wb(f"{ours}.cross_attn.output_proj", f"{rap}.attentions.1.output_proj"))
        t.update(_wb(f"{ours}.ffn.0", f"{rap}.ffns.0.layers.0.0"))  # mmcv FFN: Sequential(Linear, ReLU, Drop)
        t.update(_wb(f"{ours}.ffn.3", f"{rap}.ffns.0.layers.1"))
        for k in range(3):
            t.update(_wb(f"{ours}.norms.{k}", f"{rap}.norms.{k}"))
    return t


def planner_key_table(cfg: PlannerConfig) -> dict[str, str]:
    """Our planner names (everything but ``backbone.*`` and ``refiner.*``) -> RAP names (after the prefix)."""
    t: dict[str, str] = {
        **_wb("neck.lateral", "_backbone.img_neck.lateral_convs.0.conv"),
        **_wb("neck.fpn", "_backbone.img_neck.fpn_convs.0.conv"),
        "level_embeds": "_backbone.level_embeds",
        "camera_embeds": "_backbone.cams_embeds",
        **_wb("ego_encoder", "hist_encoding"),
        "queries.weight": "init_feature.weight",
        **_mlp("scorer.score", "scorer.pred_score"),
    }
    if cfg.agent_pred:
        t.update(_mlp("scorer.collision", "scorer.pred_col_agent"))
    if cfg.area_pred:
        t.update(_mlp("scorer.area", "scorer.pred_area"))
    for j in (0, 2, 4):
        t.update(_wb(f"domain_classifier.classifier.{j}", f"domain_classifier.classifier.{j}"))
    return t


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------

def read_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a Lightning checkpoint (``state_dict``) or a plain state dict, read safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); expected a Lightning "
                         f"checkpoint or a state dict of tensors saved with torch.save") from exc
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a dict of tensors under 'state_dict'")
    return state


def infer_planner_config(rap: Mapping[str, torch.Tensor], **overrides: Any) -> PlannerConfig:
    """Planner sizes from RAP's tensor shapes (keys without the ``agent._rap_model.`` prefix).

    d_model and the query count from ``init_feature``, proposals x poses from the positional encoding, the
    FFN width from the trajectory decoder, depths from the layer indices. RAP builds its deformable
    attentions with mmcv's 8 heads; points per head follow from the weight shapes. ``overrides`` win.
    """
    def need(key: str) -> torch.Tensor:
        if key not in rap:
            raise CheckpointKeyError(f"RAP checkpoint is missing key {RAP_PREFIX}{key}")
        return rap[key]

    head0 = f"{RAP_HEAD}0."
    queries = need("init_feature.weight")
    d_model = int(queries.shape[1])
    num_proposals = int(need(head0 + "Bev_refiner.positional_encoding.row_embed.weight").shape[0])
    num_poses = int(need(head0 + "Bev_refiner.positional_encoding.col_embed.weight").shape[0])
    if num_proposals * num_poses != queries.shape[0]:
        raise CheckpointKeyError(f"init_feature has {queries.shape[0]} queries but the positional encoding is "
                                 f"{num_proposals}x{num_poses}")
    layer_re = re.compile(re.escape(head0) + r"Bev_refiner\.bev_decoder\.layers\.(\d+)\.")
    num_layers = 1 + max(int(m.group(1)) for k in rap if (m := layer_re.match(k)))
    refinements = 1 + max(int(m.group(1)) for k in rap if (m := re.match(re.escape(RAP_HEAD) + r"(\d+)\.", k)))
    heads = int(overrides.get("num_heads", 8))
    lay0 = head0 + "Bev_refiner.bev_decoder.layers.0."
    tsa_points = int(need(lay0 + "attentions.0.attention_weights.weight").shape[0]) // (2 * heads)
    sca_points = int(need(lay0 + "attentions.1.deformable_attention.attention_weights.weight").shape[0]) // heads
    values: dict[str, Any] = dict(
        d_model=d_model,
        d_ffn=int(need(head0 + "traj_decoder.mlp.0.weight").shape[0]),
        num_heads=heads,
        num_bev_layers=num_layers,
        num_refinements=refinements,
        num_proposals=num_proposals,
        num_poses=num_poses,
        num_cameras=int(need("_backbone.cams_embeds").shape[0]),
        num_points_in_pillar=sca_points // 4,
        tsa_num_points=tsa_points,
        agent_pred="scorer.pred_col_agent.mlp.0.weight" in rap,
        area_pred="scorer.pred_area.mlp.0.weight" in rap,
    )
    values.update(overrides)
    return PlannerConfig.from_dict(values)


def _check_refiner_copies(rap: Mapping[str, torch.Tensor], cfg: PlannerConfig, rel_keys) -> None:
    for rel in rel_keys:
        first = rap[f"{RAP_HEAD}0.{rel}"]
        for r in range(1, cfg.num_refinements):
            key = f"{RAP_HEAD}{r}.{rel}"
            if key not in rap:
                raise CheckpointKeyError(f"RAP checkpoint is missing key {RAP_PREFIX}{key} (the refiner is stored "
                                         f"once per refinement)")
            if rap[key].shape != first.shape or not torch.equal(rap[key], first):
                raise CheckpointKeyError(
                    f"RAP checkpoint key {RAP_PREFIX}{key} differs from {RAP_PREFIX}{RAP_HEAD}0.{rel}: RAP's "
                    f"refiner is one module applied {cfg.num_refinements} times, so its copies must be identical")


def _check_backbone_config(hf: Mapping[str, torch.Tensor], hf_cfg: Mapping[str, Any], given: Any) -> None:
    """Fail early, and say what to pass, when the DINOv3 inside does not have the configured width / depth."""
    cls = hf.get("embeddings.cls_token", hf.get("model.embeddings.cls_token"))
    depth = {int(m.group(1)) for k in hf if (m := re.match(r"(?:model\.)?layer\.(\d+)\.", k))}
    found = (int(cls.shape[-1]) if cls is not None else None, 1 + max(depth) if depth else 0)
    wanted = (int(hf_cfg["hidden_size"]), int(hf_cfg["num_hidden_layers"]))
    if cls is not None and found != wanted:
        which = "RAP's default DINOv3 ViT-H+/16" if given is None else str(given)
        raise CheckpointKeyError(f"the DINOv3 in this RAP checkpoint has width {found[0]} and {found[1]} layers "
                                 f"({RAP_PREFIX}{RAP_BACKBONE}*) but the backbone config ({which}) says width "
                                 f"{wanted[0]} and {wanted[1]} layers; pass backbone_config= (the transformers "
                                 f"config.json of the DINOv3 it was trained with)")


def load_rap_checkpoint(path: str | Path, backbone_config: Mapping[str, Any] | str | Path | None = None,
                        **overrides: Any) -> RAPPlanner:
    """Load RAP's released Lightning checkpoint into our planner.

    Args:
        path: RAP's ``.ckpt`` (``{"state_dict": {"agent._rap_model.*"}}``), read with ``weights_only=True``.
        backbone_config: the DINOv3ViTConfig of the backbone inside (dict, ``config.json`` or snapshot dir);
            default RAP's DINOv3 ViT-H+/16.
        **overrides: PlannerConfig values that shapes cannot tell (e.g. ``reference_points="grid"``,
            geometry constants); ``freeze`` (default True) freezes the backbone.

    Returns:
        The planner in eval mode, backbone frozen, ``weights_source`` = the checkpoint path.

    Raises:
        CheckpointKeyError naming the key for a missing or unused key or refiner copies that differ.
    """
    freeze = bool(overrides.pop("freeze", True))
    state = read_checkpoint_state(path)
    if not any(k.startswith(RAP_PREFIX) for k in state):
        raise CheckpointKeyError(f"{path} has no '{RAP_PREFIX}*' keys, so it is not a RAP checkpoint; for "
                                 f"checkpoints written by our own training use load_planner_checkpoint")
    foreign = sorted(k for k in state if not k.startswith(RAP_PREFIX))
    if foreign:
        raise CheckpointKeyError(f"RAP checkpoint {path} has unused key {foreign[0]} outside {RAP_PREFIX}")
    rap = {k[len(RAP_PREFIX):]: v for k, v in state.items()}
    cfg = infer_planner_config(rap, **overrides)

    # backbone: transformers layout -> timm
    hf = {k[len(RAP_BACKBONE):]: v for k, v in rap.items() if k.startswith(RAP_BACKBONE)}
    hf_cfg = read_hf_config(backbone_config)
    _check_backbone_config(hf, hf_cfg, backbone_config)
    timm_model = (load_hf_dinov3(hf_cfg, state_dict=hf, key_prefix=RAP_PREFIX + RAP_BACKBONE)
                  if hf else None)
    if timm_model is None:
        raise CheckpointKeyError(f"RAP checkpoint has no {RAP_PREFIX}{RAP_BACKBONE}* keys (the DINOv3 backbone)")
    lateral = rap.get("_backbone.img_neck.lateral_convs.0.conv.weight")
    if lateral is not None and lateral.shape[1] != timm_model.embed_dim:
        raise CheckpointKeyError(f"{RAP_PREFIX}_backbone.img_neck.lateral_convs.0.conv.weight expects backbone "
                                 f"width {lateral.shape[1]} but the backbone config has hidden_size "
                                 f"{timm_model.embed_dim}; pass backbone_config= for the DINOv3 inside")
    from rap_backbone.backbones import Backbone

    backbone = Backbone.from_timm(timm_model, name=f"dinov3-hf-{timm_model.embed_dim}",
                                  weights_source=str(path), freeze=freeze)
    planner = RAPPlanner(backbone, cfg)
    planner.backbone_hf_config = hf_cfg
    planner.rap_extras = dict(getattr(timm_model, "hf_extras", {}))

    # everything else through the explicit table
    table = planner_key_table(cfg)
    refiner = refiner_key_table(cfg)
    _check_refiner_copies(rap, cfg, list(refiner.values()) + [f"Bev_refiner.bev_decoder.{g}"
                                                             for g in RAP_REFINER_GEOMETRY
                                                             if f"{RAP_HEAD}0.Bev_refiner.bev_decoder.{g}" in rap])
    used = {k for k in rap if k.startswith(RAP_BACKBONE)}
    mapped: dict[str, torch.Tensor] = {}
    for ours, theirs in {**table, **{o: f"{RAP_HEAD}0.{t}" for o, t in refiner.items()}}.items():
        if theirs not in rap:
            raise CheckpointKeyError(f"RAP checkpoint is missing key {RAP_PREFIX}{theirs} (for planner.{ours})")
        mapped[ours] = rap[theirs]
        used.add(theirs)
    for rel in refiner.values():
        used.update(f"{RAP_HEAD}{r}.{rel}" for r in range(cfg.num_refinements))
    skipped = sorted(k for k in rap if any(k == f"{RAP_HEAD}{r}.Bev_refiner.bev_decoder.{g}"
                                           for r in range(cfg.num_refinements) for g in RAP_REFINER_GEOMETRY))
    used.update(skipped)
    unused = sorted(set(rap) - used)
    if unused:
        raise CheckpointKeyError(f"RAP checkpoint has unused key {RAP_PREFIX}{unused[0]}"
                                 + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else "")
                                 + "; the planner has no slot for it (different RAP variant or config?)")
    if skipped:
        log.info("RAP checkpoint %s: skipping %d fixed encoder geometry tensors the forward never reads (%s)",
                 path, len(skipped), ", ".join(sorted({k.rsplit(".", 1)[-1] for k in skipped})))
    own = planner.state_dict()
    for ours, tensor in mapped.items():
        if own[ours].shape != tensor.shape:
            raise CheckpointKeyError(f"RAP checkpoint key for planner.{ours} has shape {tuple(tensor.shape)}, the "
                                     f"planner expects {tuple(own[ours].shape)}")
    missing = sorted(k for k in own if not k.startswith("backbone.") and k not in mapped)
    if missing:
        raise CheckpointKeyError(f"planner key {missing[0]} has no tensor in the RAP checkpoint")
    planner.load_state_dict(mapped, strict=False)
    planner.checkpoint_path = str(path)
    return planner.eval()


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------

def refiner_geometry(cfg: PlannerConfig) -> dict[str, torch.Tensor]:
    """The four fixed tensors RAP's ``BEVFormerEncoder.__init__`` registers (encoder.py get_reference_points)."""
    h, w, p = cfg.num_proposals, cfg.num_poses, cfg.num_points_in_pillar
    x0, y0, z0, x1, y1, z1 = cfg.point_cloud_range
    span_z = z1 - z0
    zs = (torch.linspace(0.5, span_z - 0.5, p).view(-1, 1, 1).expand(p, h, w) / span_z)
    xs = torch.linspace(0.5, w - 0.5, w).view(1, 1, w).expand(p, h, w) / w
    ys = torch.linspace(0.5, h - 0.5, h).view(1, h, 1).expand(p, h, w) / h
    ref_3d = torch.stack((xs, ys, zs), -1).permute(0, 3, 2, 1).flatten(2).permute(0, 2, 1)[None]
    ref_x, ref_y = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
    ref_2d = torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1).unsqueeze(2)
    hybrid = torch.stack([ref_2d, ref_2d], 1).reshape(2, h * w, 1, 2)
    scale = torch.tensor([x1 - x0, y1 - y0, z1 - z0])
    points = ref_3d * scale + torch.tensor([x0, y0, z0])
    points = torch.cat([points, torch.ones_like(points[..., :1])], -1).permute(1, 0, 2, 3)
    return {"reference_points": points.contiguous(), "ref_3d": ref_3d.contiguous(),
            "hybird_ref_2d": hybrid.contiguous(), "ref_2d": ref_2d.contiguous()}


def planner_to_rap_state(planner: RAPPlanner, backbone_config: Mapping[str, Any] | str | Path | None = None, *,
                         nest_v5: bool = False) -> dict[str, torch.Tensor]:
    """Our planner's tensors in RAP's names (with the ``agent._rap_model.`` prefix)."""
    cfg = planner.config
    own = {k: v.detach().cpu() for k, v in planner.state_dict().items()}
    hf_cfg = backbone_config if backbone_config is not None else getattr(planner, "backbone_hf_config", None)
    if hf_cfg is None:
        raise ValueError("save_rap_checkpoint needs the backbone's DINOv3ViTConfig (backbone_config=...); RAP's "
                         "code reads its backbone in transformers' layout")
    if any("lora_" in k for k in own):
        raise ValueError("the planner's backbone has LoRA adapters; fold them in first (rap_backbone.planner.merge_lora(planner.backbone))")
    timm_state = {k[len("backbone.model."):]: v for k, v in own.items() if k.startswith("backbone.model.")}
    hf = timm_to_hf_state_dict(timm_state, hf_cfg, extras=getattr(planner, "rap_extras", None), nest_v5=nest_v5)
    out = {RAP_PREFIX + RAP_BACKBONE + k: v for k, v in hf.items()}
    for ours, theirs in planner_key_table(cfg).items():
        out[RAP_PREFIX + theirs] = own[ours]
    geometry = refiner_geometry(cfg)
    for r in range(cfg.num_refinements):
        for ours, theirs in refiner_key_table(cfg).items():
            out[f"{RAP_PREFIX}{RAP_HEAD}{r}.{theirs}"] = own[ours]  # same storage: one tied module in RAP
        for name, tensor in geometry.items():
            out[f"{RAP_PREFIX}{RAP_HEAD}{r}.Bev_refiner.bev_decoder.{name}"] = tensor
    return out


def save_rap_checkpoint(planner: RAPPlanner, path: str | Path,
                        backbone_config: Mapping[str, Any] | str | Path | None = None, *,
                        nest_v5: bool = False) -> Path:
    """Write ``planner`` in RAP's Lightning layout (loads into RAP's ``RAPModel`` with ``strict=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": planner_to_rap_state(planner, backbone_config, nest_v5=nest_v5)}, path)
    return path


# ---------------------------------------------------------------------------------------------------
# Our own training checkpoints
# ---------------------------------------------------------------------------------------------------

_PLANNER_ANCHOR = "refiner.decoder.mlp.0.weight"


def find_planner_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """The prefix under which a Lightning checkpoint holds our planner (e.g. ``agent.planner.``)."""
    hits = sorted(k[: -len(_PLANNER_ANCHOR)] for k in state if k.endswith(_PLANNER_ANCHOR))
    if not hits:
        raise CheckpointKeyError(f"no planner found (no key ending in {_PLANNER_ANCHOR!r}); is this a checkpoint "
                                 f"of our RAP agent? RAP's own checkpoints load with load_rap_checkpoint")
    return hits[0]


def infer_own_config(state: Mapping[str, torch.Tensor], prefix: str, **overrides: Any) -> PlannerConfig:
    """PlannerConfig from the shapes of our planner's tensors under ``prefix``."""
    rap = {}
    for ours, theirs in {**planner_key_table(PlannerConfig(agent_pred=True, area_pred=True)),
                         **{o: f"{RAP_HEAD}0.{t}" for o, t in
                            refiner_key_table(PlannerConfig(num_bev_layers=1)).items()}}.items():
        if prefix + ours in state:
            rap[theirs] = state[prefix + ours]
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"refiner\.layers\.(\d+)\.", k))}
    values = {"num_bev_layers": 1 + max(layers) if layers else 0, "num_refinements": 4}
    values.update(overrides)
    return infer_planner_config(rap, **values)


def load_checkpoint_backbone(path: str | Path, backbone: nn.Module) -> nn.Module:
    """Load the backbone tensors of one of our planner checkpoints (``<planner prefix>backbone.*``, e.g. the
    frozen random-init encoder a planner was trained with) into ``backbone``, strictly; returns it."""
    state = read_checkpoint_state(path)
    prefix = find_planner_prefix(state) + "backbone."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointKeyError(f"{path} holds no backbone tensors (no key under {prefix!r}); set "
                                 "backbone.weights= to the encoder's own file instead")
    try:
        backbone.load_state_dict(sub, strict=True)
    except RuntimeError as err:
        raise CheckpointKeyError(f"{path}: its backbone tensors do not fit backbone {getattr(backbone, 'name', '?')!r} "
                                 f"({str(err).splitlines()[-1].strip()}); select the backbone it was trained with"
                                 ) from None
    backbone.weights_source = f"{path} (backbone tensors)"
    return backbone


def load_planner_checkpoint(path: str | Path, backbone: nn.Module | str, config: PlannerConfig | None = None, *,
                            freeze: bool = True, **overrides: Any) -> RAPPlanner:
    """Load a checkpoint our RAP agent wrote (planner tensors under e.g. ``agent.planner.``), strictly.

    ``backbone`` is the Backbone (or its name for ``build_backbone``) the planner was trained with; its
    weights come from the checkpoint. Sizes are inferred from shapes unless ``config`` is given.
    """
    state = read_checkpoint_state(path)
    prefix = find_planner_prefix(state)
    cfg = config or infer_own_config(state, prefix, **overrides)
    if isinstance(backbone, str):
        from rap_backbone.backbones import build_backbone

        backbone = build_backbone(backbone, freeze=freeze)
    planner = RAPPlanner(backbone, cfg)
    own = planner.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(k for k in own if k not in sub)
    unused = sorted(k for k in sub if k not in own)
    if missing:
        raise CheckpointKeyError(f"{path}: planner key {prefix}{missing[0]} is missing"
                                 + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                                 + "; was it trained with another backbone or planner size?")
    if unused:
        raise CheckpointKeyError(f"{path}: unused key {prefix}{unused[0]}"
                                 + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""))
    bad = [k for k in own if own[k].shape != sub[k].shape]
    if bad:
        raise CheckpointKeyError(f"{path}: key {prefix}{bad[0]} has shape {tuple(sub[bad[0]].shape)}, the planner "
                                 f"expects {tuple(own[bad[0]].shape)}")
    planner.load_state_dict(sub, strict=True)
    planner.checkpoint_path = str(path)
    return planner.eval()


__all__ = ["load_rap_checkpoint", "save_rap_checkpoint", "load_planner_checkpoint", "load_checkpoint_backbone", "planner_key_table",
           "refiner_key_table", "refiner_geometry", "infer_planner_config", "CheckpointKeyError",
           "hf_to_timm_state_dict"]
