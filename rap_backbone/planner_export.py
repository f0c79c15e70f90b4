"""The whole RAP planner, backbone included, out of Python: a ``torch.export`` program and ONNX.

Inputs (RAP's feature dict as positional tensors, in this order): ``camera_feature [B,4,3,H,W]``
(ImageNet-normalised), ``lidar2img [B,4,4,4]``, ``img_shape [B,4,3]``, ``ego_status [B,T,11]``. Outputs:
``trajectory [B,8,3]``, ``pdm_score [B,P]``, ``proposals [B,P,8,3]``, ``pred_logit [B,P,6]`` (the eval forward
of :class:`rap_backbone.planner.RAPPlanner`). Shapes are fixed at the sample's: a planner is exported for one
camera size (its image scale) and batch size. The deformable attention is pure PyTorch (``grid_sample`` becomes
ONNX ``GridSample``, opset >= 16), so nothing custom is needed. A planner around an onnxruntime backbone cannot
be exported (its encoder already left PyTorch): export it with ``backbone.runtime=torch``.

The JSON of :class:`PlannerExportInfo` travels in each file (ONNX ``metadata_props`` / extra file of the
``.pt2``) under ``rap_planner``.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from eupe.export import ONNX_OPSET, ExportError, quantize_weight_products, traceable
from rap_backbone.backbones import Backbone
from rap_backbone.planner import RAPPlanner, SpatialCrossAttention

PLANNER_INPUTS = ("camera_feature", "lidar2img", "img_shape", "ego_status")
PLANNER_OUTPUTS = ("trajectory", "pdm_score", "proposals", "pred_logit")
PLANNER_METADATA_KEY = "rap_planner"
# visible: each camera samples only the queries it sees (NonZero / Gather / ScatterND, as the eager CPU planner);
# dense: every query in every camera (fixed shapes, what GPU compilers such as TensorRT want)
SAMPLING_MODES = ("visible", "dense")
DEFAULT_SAMPLING = "visible"


@dataclass(frozen=True)
class PlannerExportInfo:
    """What an exported planner file says about itself."""

    backbone: str
    weights_source: str
    planner: dict[str, Any]
    input_shapes: dict[str, list[int]]
    precision: str = "fp32"  # fp32 | int8 (eupe.export's dynamic recipe on the weight MatMuls)
    sampling: str = "dense"  # cross-attention rows the graph samples: SAMPLING_MODES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class PlannerGraph(nn.Module):
    """The planner's eval forward on positional tensors (what both file formats hold)."""

    def __init__(self, planner: RAPPlanner) -> None:
        super().__init__()
        self.planner = planner

    def forward(self, camera_feature: torch.Tensor, lidar2img: torch.Tensor, img_shape: torch.Tensor,
                ego_status: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.planner({"camera_feature": camera_feature, "lidar2img": lidar2img, "img_shape": img_shape,
                            "ego_status": ego_status})
        return tuple(out[k] for k in PLANNER_OUTPUTS)


def _inputs(sample: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    missing = [k for k in PLANNER_INPUTS if k not in sample]
    if missing:
        raise ExportError(f"planner export sample lacks {missing}; it needs {list(PLANNER_INPUTS)}")
    return tuple(sample[k].float() for k in PLANNER_INPUTS)


@contextlib.contextmanager
def traced_sampling(planner: RAPPlanner, sampling: str) -> Iterator[None]:
    """Within the block, the planner's cross-attention layers trace the ``sampling`` path (SAMPLING_MODES)."""
    if sampling not in SAMPLING_MODES:
        raise ExportError(f"unknown planner sampling {sampling!r}; use one of {list(SAMPLING_MODES)}")
    layers = [m for m in planner.modules() if isinstance(m, SpatialCrossAttention)]
    for layer in layers:
        layer.traced_sampling = sampling
    try:
        yield
    finally:
        for layer in layers:
            del layer.traced_sampling  # back to the class default


def trace_planner(planner: RAPPlanner, sample: Mapping[str, torch.Tensor], *, sampling: str = DEFAULT_SAMPLING
                  ) -> tuple[torch.export.ExportedProgram, PlannerExportInfo]:
    """``torch.export`` of the planner's eval forward at the shapes of ``sample`` (RAP's feature dict);
    ``sampling``: the cross-attention rows the program samples (SAMPLING_MODES)."""
    if not isinstance(planner.backbone, Backbone):
        raise ExportError(f"the planner's backbone is {type(planner.backbone).__name__} "
                          f"({planner.weights_source}), not a PyTorch encoder: export the planner with "
                          "backbone.runtime=torch (its encoder can then be exported on its own)")
    planner.backbone.check_size(*sample["camera_feature"].shape[-2:])
    graph = PlannerGraph(planner).eval()
    args = _inputs(sample)
    info = PlannerExportInfo(backbone=planner.backbone.name, weights_source=planner.weights_source,
                             planner=planner.config.to_dict(),
                             input_shapes={k: list(a.shape) for k, a in zip(PLANNER_INPUTS, args, strict=True)},
                             sampling=sampling)
    with traceable(graph), traced_sampling(planner, sampling), torch.no_grad():
        program = torch.export.export(graph, args)
    return program, info


def export_planner_program(program: torch.export.ExportedProgram, info: PlannerExportInfo, path: str | Path) -> Path:
    """Write the traced planner as a ``.pt2`` archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, tmp, extra_files={PLANNER_METADATA_KEY: info.to_json()})
    tmp.replace(path)
    return path


def export_planner_onnx(program: torch.export.ExportedProgram, info: PlannerExportInfo, path: str | Path) -> Path:
    """Write the traced planner as ONNX (inputs / outputs named as ``PLANNER_INPUTS`` / ``PLANNER_OUTPUTS``)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=list(PLANNER_INPUTS), output_names=list(PLANNER_OUTPUTS),
                                         verbose=False)
    except Exception as err:
        raise ExportError(f"the RAP planner ({info.backbone}) does not export to ONNX: {type(err).__name__}: "
                          f"{str(err)[:400]}") from err
    model = onnx_program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = PLANNER_METADATA_KEY, info.to_json()
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def check_planner_file(info: Mapping[str, Any], planner: RAPPlanner, path: Path) -> None:
    """Raise :class:`ExportError` naming the differing keys unless the exported planner described by ``info``
    has ``planner``'s config and backbone name."""
    wanted = json.loads(json.dumps(planner.config.to_dict()))  # tuples as the file's JSON lists
    stored = info.get("planner", {})
    differ = sorted(k for k in set(wanted) | set(stored) if wanted.get(k) != stored.get(k))
    backbone = getattr(planner.backbone, "name", None)
    if differ or info.get("backbone") != backbone:
        what = [f"{k}: file {stored.get(k)!r}, config {wanted.get(k)!r}" for k in differ]
        if info.get("backbone") != backbone:
            what.insert(0, f"backbone: file {info.get('backbone')!r}, config {backbone!r}")
        raise ExportError(f"{path} is not an export of this planner ({'; '.join(what)}); export it again with "
                          "navsim_agents/run_export.py planner=<this planner> backbone=<this backbone> "
                          "planner_export.enabled=true")


def quantize_planner_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """An int8 copy of an exported planner ONNX: the weight MatMuls of the encoder and the head in int8 (eupe.export
    ``dynamic`` recipe), the deformable sampling, attention products and norms in fp32; its description says
    ``precision: int8``."""
    import onnx

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    info = OnnxPlanner(fp32_path).info
    if info.get("precision", "fp32") != "fp32":
        raise ExportError(f"{fp32_path} is already {info['precision']}; quantise the fp32 planner export")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = int8_path.with_name(int8_path.name + ".tmp")
    try:
        quantize_weight_products(fp32_path, tmp)
        model = onnx.load(str(tmp))
        for entry in model.metadata_props:
            if entry.key == PLANNER_METADATA_KEY:
                entry.value = json.dumps({**info, "precision": "int8"}, sort_keys=True)
        onnx.save(model, str(tmp))
        tmp.replace(int8_path)
    finally:
        tmp.unlink(missing_ok=True)
    return int8_path


class ProgramPlanner:
    """A ``.pt2`` written by :func:`export_planner_program`: ``ProgramPlanner(path)(features)`` -> dict of
    ``PLANNER_OUTPUTS``; ``info`` is the file's description."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"exported planner {self.path} does not exist; write it with "
                              "navsim_agents/run_export.py planner_export.enabled=true")
        extra = {PLANNER_METADATA_KEY: ""}
        try:
            program = torch.export.load(self.path, extra_files=extra)
        except Exception as err:
            raise ExportError(f"{self.path} is not a torch.export program ({type(err).__name__}: {err})") from err
        if not extra[PLANNER_METADATA_KEY]:
            raise ExportError(f"{self.path} has no '{PLANNER_METADATA_KEY}' description: not an exported RAP planner")
        self.module, self.info = program.module(), json.loads(extra[PLANNER_METADATA_KEY])

    def __call__(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return dict(zip(PLANNER_OUTPUTS, self.module(*_inputs(features)), strict=True))


class OnnxPlanner:
    """An exported planner run by onnxruntime: ``OnnxPlanner(path)(features)`` -> dict of ``PLANNER_OUTPUTS``
    as torch tensors; the inputs' shapes must be those the file was exported with. ``expect``: the planner the
    file must be an export of (same planner config and backbone name), else :class:`ExportError`; ``threads``:
    onnxruntime's intra-op threads (None: its default)."""

    def __init__(self, path: str | Path, *, expect: RAPPlanner | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX planner {self.path} does not exist; write it with navsim_agents/run_export.py "
                              "planner_export.enabled=true")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"onnxruntime cannot open {self.path} ({type(err).__name__}: {err})") from err
        raw = self.session.get_modelmeta().custom_metadata_map.get(PLANNER_METADATA_KEY)
        if raw is None:
            raise ExportError(f"{self.path} has no '{PLANNER_METADATA_KEY}' metadata: not an exported RAP planner")
        self.info = json.loads(raw)
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != list(PLANNER_INPUTS) or names_out != list(PLANNER_OUTPUTS):
            raise ExportError(f"{self.path}: inputs {names_in} / outputs {names_out} are not the planner's "
                              f"{list(PLANNER_INPUTS)} / {list(PLANNER_OUTPUTS)}; re-export it")
        if expect is not None:
            check_planner_file(self.info, expect, self.path)

    def __call__(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {}
        for name, x in zip(PLANNER_INPUTS, _inputs(features), strict=True):
            expected = self.info["input_shapes"][name]
            if list(x.shape) != expected:
                raise ExportError(f"{self.path}: input {name} has shape {list(x.shape)}, the file was exported for "
                                  f"{expected}; export the planner again at this size")
            feeds[name] = np.ascontiguousarray(x.detach().cpu().numpy())
        outputs = self.session.run(list(PLANNER_OUTPUTS), feeds)
        return {k: torch.from_numpy(v) for k, v in zip(PLANNER_OUTPUTS, outputs, strict=True)}
