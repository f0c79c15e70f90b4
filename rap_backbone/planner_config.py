"""Sizes and geometry of the RAP planner: the one home of their defaults, and the Hydra ``planner`` schema.

The yamls in ``configs/planner/`` extend ``planner/schema`` (registered by ``register_planner_schema``) and
state only what their size changes; every other value is the default here, from vita-epfl/RAP
``navsim/agents/rap_dino/navsim_config.py`` (RAPConfig). Kept free of torch so that composing a config is cheap.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from rap_backbone.nuplan_rig import PACIFICA

# navsim_config.py RAPConfig: the ego footprint of the reference points, nuPlan's Pacifica plus a margin
FOOTPRINT_LENGTH_MARGIN = 0.25  # half_length = 2.588 + 0.25 ("small buffer for safety")
FOOTPRINT_WIDTH_MARGIN = 0.1  # half_width = 1.1485 + 0.1
REFERENCE_POINT_MODES = ("paired", "grid")
# rap_dino/bevformer/bev_feature_build.py: RandomScaleImageMultiViewImage(scales=[0.4]) -- 1920x1080 -> 768x432
RAP_IMAGE_SCALE = 0.4
# planner.runtime: torch (the eager planner) or onnxruntime (the whole planner exported by run_export.py
# planner_export, read from planner.exported)
PLANNER_RUNTIMES = ("torch", "onnxruntime")


@dataclass
class PlannerConfig:
    """Sizes and geometry of the RAP planner (defaults: RAP's navsim_config.py, the paper size).

    ``reference_points``: ``paired`` pairs footprint corner k with pillar height k (anchor k = corner k % 4
    at height k % P), as in RAP's released code and checkpoint (RAP issue #10); ``grid`` is the full
    corner x height product of the earlier commit.
    """

    d_model: int = 1280  # tf_d_model
    d_ffn: int = 1024  # tf_d_ffn (refiner FFN and every MLP head's hidden width)
    num_heads: int = 8  # TSA / SCA heads (mmcv defaults; RAP's tf_num_head is 8 too)
    num_bev_layers: int = 2
    num_refinements: int = 4  # ref_num
    num_proposals: int = 64
    num_poses: int = 8
    num_cameras: int = 4
    num_points_in_pillar: int = 4
    tsa_num_points: int = 4  # TemporalSelfAttention default num_points
    point_cloud_range: tuple[float, ...] = (-32.0, -32.0, -2.0, 32.0, 32.0, 6.0)
    lidar_height: float = 0.0
    half_length: float = PACIFICA.half_length + FOOTPRINT_LENGTH_MARGIN
    half_width: float = PACIFICA.half_width + FOOTPRINT_WIDTH_MARGIN
    rear_axle_to_center: float = PACIFICA.rear_axle_to_center
    reference_points: str = "paired"
    dropout: float = 0.0
    agent_pred: bool = True  # collision head (training only)
    area_pred: bool = True  # area head (training only)
    grid_mask_prob: float = 0.7  # GridMask on the camera images in training; 0 disables
    lora_rank: int = 0  # >0: LoRA adapters on the backbone's attention qkv / proj layers
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("qkv", "proj")

    def __post_init__(self) -> None:
        self.point_cloud_range = tuple(float(v) for v in self.point_cloud_range)
        self.lora_targets = tuple(self.lora_targets)
        if self.reference_points not in REFERENCE_POINT_MODES:
            raise ValueError(f"planner.reference_points={self.reference_points!r}; use one of "
                             f"{', '.join(REFERENCE_POINT_MODES)}")
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(f"planner.d_model={self.d_model} must be even and divisible by num_heads="
                             f"{self.num_heads}")
        if len(self.point_cloud_range) != 6:
            raise ValueError("planner.point_cloud_range needs 6 values (x0, y0, z0, x1, y1, z1)")

    @property
    def num_queries(self) -> int:
        return self.num_proposals * self.num_poses

    @property
    def num_anchors(self) -> int:
        """3D reference points per query: 4 footprint corners x pillar heights (16 slots in both modes)."""
        return 4 * self.num_points_in_pillar

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PlannerConfig":
        """Build from a mapping (e.g. a Hydra ``planner`` node); unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(f"unknown planner config keys {unknown}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v)
                      for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannerGroupConfig(PlannerConfig):
    """The Hydra ``planner`` group: PlannerConfig, the seed of the GridMask random stream and the scale of the
    camera images the size is meant for (RAP's 0.4 at the paper size; the CPU sizes use smaller images)."""

    seed: Optional[int] = None
    image_scale: float = RAP_IMAGE_SCALE
    runtime: str = "torch"
    exported: Optional[str] = None  # the planner's .onnx for runtime=onnxruntime

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.runtime not in PLANNER_RUNTIMES:
            raise ValueError(f"planner.runtime={self.runtime!r}; use one of {list(PLANNER_RUNTIMES)}")
        if self.runtime == "onnxruntime" and not self.exported:
            raise ValueError("planner.runtime=onnxruntime needs planner.exported=<the planner .onnx written by "
                             "navsim_agents/run_export.py planner_export.enabled=true>")

    def planner_config(self) -> PlannerConfig:
        """The network's part (without seed, image scale and runtime)."""
        return PlannerConfig.from_dict({f.name: getattr(self, f.name) for f in fields(PlannerConfig)})


PLANNER_SCHEMA = "schema"  # configs/planner/*.yaml start with ``defaults: [schema, _self_]``


def register_planner_schema() -> None:
    """Store ``planner/schema`` in Hydra's ConfigStore (idempotent); call before composing a config."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="planner", name=PLANNER_SCHEMA, node=PlannerGroupConfig)


def planner_profile(node: Mapping[str, Any] | None) -> PlannerGroupConfig:
    """A planner group node, or a planner yaml read as is (its ``defaults`` list ignored), over the schema's
    defaults; unknown keys are an error naming them."""
    values = {k: v for k, v in dict(node or {}).items() if k not in ("defaults", "_target_")}
    return PlannerGroupConfig.from_dict(values)


__all__ = ["PLANNER_RUNTIMES", "PLANNER_SCHEMA", "RAP_IMAGE_SCALE", "PlannerConfig", "PlannerGroupConfig", "planner_profile",
           "register_planner_schema"]
