"""Encoders out of Python: ONNX and ``torch.export`` programs, int8 quantisation, an onnxruntime encoder.

An exportable encoder is any module ``encoder(images [B,3,H,W], normalised by its own mean/std) -> (summary
[B,C], patch [B,C,H/stride,W/stride])`` plus an :class:`EncoderInfo` describing it. Files carry that
description with them, so a runtime can check that a file is the encoder it was asked for:

- ONNX: input ``images``, outputs ``summary`` and ``patch``; batch, H and W dynamic (H, W in multiples of the
  stride); the JSON of :class:`EncoderInfo` in the model's ``metadata_props`` under ``eupe_encoder``.
  TinyViT exports at one size (``EncoderInfo.fixed_hw``): its window partition has a window-count dimension
  that is 1 at RAP's reduced input, and ``torch.export`` specialises dimensions of size 1, so one traced
  program cannot serve both one and several windows.
- ``torch.export``: a ``.pt2`` archive (``torch.export.save``) with the same JSON as extra file ``eupe_encoder``.

    >>> info = EncoderInfo(name="eupe-t", stride=16, embed_dim=192, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> export_onnx(encoder, info, "eupe-t.onnx", sample_hw=(224, 384))
    >>> quantize_int8("eupe-t.onnx", "eupe-t.int8.onnx")  # recipe "dynamic"; static ones take calibration images
    >>> summary, patch = OnnxEncoder("eupe-t.int8.onnx", expect_name="eupe-t")(images_normalised)
"""
from __future__ import annotations

import contextlib
import json
import logging
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("summary", "patch")
METADATA_KEY = "eupe_encoder"
# ONNX opset of torch's dynamo exporter default; onnxruntime's QDQ quantiser needs >= 13 (per-channel axes).
ONNX_OPSET = 18
# Largest grid the exported programs accept (cells per side): 64 x 16 = 1024 px for a ViT/16.
MAX_GRID = 128


class ExportError(ValueError):
    """An export request or an exported file does not fit the encoder contract."""


@dataclass(frozen=True)
class EncoderInfo:
    """What a file must say about the encoder inside it (JSON in the file)."""

    name: str
    stride: int
    embed_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_source: str = "random"
    precision: str = "fp32"  # fp32 | int8
    # (H, W) for encoders exported at one size; None: any multiple of the stride
    fixed_hw: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> "EncoderInfo":
        try:
            raw = json.loads(text)
            return cls(name=str(raw["name"]), stride=int(raw["stride"]), embed_dim=int(raw["embed_dim"]),
                       mean=tuple(float(v) for v in raw["mean"]), std=tuple(float(v) for v in raw["std"]),
                       weights_source=str(raw.get("weights_source", "random")),
                       precision=str(raw.get("precision", "fp32")),
                       fixed_hw=tuple(int(v) for v in raw["fixed_hw"]) if raw.get("fixed_hw") else None)
        except (ValueError, KeyError, TypeError) as err:
            raise ExportError(f"{where}: the '{METADATA_KEY}' metadata is not a valid encoder description "
                              f"({type(err).__name__}: {err}); re-export the encoder") from err


def check_export_size(info: EncoderInfo, height: int, width: int) -> None:
    """Raise :class:`ExportError` unless ``height`` and ``width`` are positive multiples of the stride."""
    s = info.stride
    if height <= 0 or width <= 0 or height % s or width % s:
        raise ExportError(f"cannot export {info.name!r} at {height}x{width}: sizes must be positive multiples of "
                          f"its stride {s} (e.g. {max(s, -(-height // s) * s)}x{max(s, -(-width // s) * s)})")
    if height // s > MAX_GRID or width // s > MAX_GRID:
        raise ExportError(f"cannot export {info.name!r} at {height}x{width}: more than {MAX_GRID} cells per side")
    if info.fixed_hw is not None and (height, width) != tuple(info.fixed_hw):
        raise ExportError(f"{info.name!r} is exported for {info.fixed_hw[0]}x{info.fixed_hw[1]} images only, got "
                          f"{height}x{width}; export it again at this size (sample_hw)")


# ---- making timm encoders traceable with symbolic H, W --------------------------------------------------------
def _dinov3_rope_embed(rope: nn.Module, feat_shape: Sequence[int], no_aug: bool = False) -> torch.Tensor:
    """timm ``RotaryEmbeddingDinoV3._create_embed`` (eval: no coordinate augmentation) with tensor arithmetic only.

    timm builds the centred grid with ``float(size)``, which fixes H and W in a traced program; here the same
    float32 values ``(i + 0.5 + offset) / size`` are computed from the symbolic size (timm layers/pos_embed_sincos.py
    ``_build_grid(grid_type='centered', normalize_coords='separate')``)."""
    axes = [(torch.arange(s, dtype=torch.float32) + 0.5 + rope.grid_offset) / s for s in feat_shape]
    grid = torch.stack(torch.meshgrid(axes, indexing=rope.grid_indexing), dim=-1)
    coords = (2.0 * grid - 1.0).flatten(0, -2)
    sin, cos = rope._get_pos_embed_from_coords(coords)
    return torch.cat([sin, cos], dim=-1)


@contextlib.contextmanager
def traceable(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, timm modules whose Python arithmetic would fix the input size use tensor arithmetic."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

    patched = []
    for sub in module.modules():
        if isinstance(sub, RotaryEmbeddingDinoV3):
            if sub.normalize_coords != "separate":
                raise ExportError(f"RoPE with normalize_coords={sub.normalize_coords!r} is not supported for export "
                                  "(DINOv3 and EUPE use 'separate')")
            sub._create_embed = types.MethodType(_dinov3_rope_embed, sub)
            patched.append((sub, "_create_embed"))
    try:
        yield module
    finally:
        for sub, attr in patched:
            delattr(sub, attr)


def _dynamic_shapes(info: EncoderInfo) -> dict:
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=1024)}
    if info.fixed_hw is None:
        rows, cols = dim("rows", min=1, max=MAX_GRID), dim("cols", min=1, max=MAX_GRID)
        shapes.update({2: info.stride * rows, 3: info.stride * cols})
    return {"images": shapes}


class _Named(nn.Module):
    """Gives the encoder's input the contract's name (torch.export keys dynamic shapes by argument name)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summary, patch = self.encoder(images)
        return summary, patch


def _sample(info: EncoderInfo, sample_hw: tuple[int, int], batch: int = 2) -> torch.Tensor:
    check_export_size(info, *sample_hw)
    return torch.randn(batch, 3, *sample_hw, generator=torch.Generator().manual_seed(0))


def trace(encoder: nn.Module, info: EncoderInfo, *, sample_hw: tuple[int, int] = (224, 384)):
    """``torch.export`` of ``encoder`` with dynamic batch, H and W (multiples of the stride; H, W fixed at
    ``info.fixed_hw`` when set); both file formats are written from it, so exporting both traces once."""
    if info.fixed_hw is not None and tuple(sample_hw) != tuple(info.fixed_hw):
        raise ExportError(f"{info.name!r} exports at one size, {info.fixed_hw}; trace it at that size, not {sample_hw}")
    wrapped = _Named(encoder).eval()
    with traceable(wrapped), torch.no_grad():
        return torch.export.export(wrapped, (_sample(info, sample_hw),), dynamic_shapes=_dynamic_shapes(info))


def export_program(encoder: nn.Module, info: EncoderInfo, path: str | Path, *,
                   sample_hw: tuple[int, int] = (224, 384), program=None) -> Path:
    """Write ``encoder`` as a ``torch.export`` program (``.pt2``); ``program``: the output of :func:`trace`."""
    path = Path(path)
    program = program if program is not None else trace(encoder, info, sample_hw=sample_hw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, tmp, extra_files={METADATA_KEY: info.to_json()})
    tmp.replace(path)
    return path


def load_program(path: str | Path, *, expect_name: str | None = None) -> tuple[nn.Module, EncoderInfo]:
    """Read a ``.pt2`` written by :func:`export_program`: ``(module, info)``."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported program {path} does not exist; write it with navsim_agents/run_export.py")
    extra = {METADATA_KEY: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:
        raise ExportError(f"{path} is not a torch.export program ({type(err).__name__}: {err})") from err
    if not extra[METADATA_KEY]:
        raise ExportError(f"{path} has no '{METADATA_KEY}' description: not written by eupe.export")
    info = EncoderInfo.from_json(extra[METADATA_KEY], where=str(path))
    _check_name(info, expect_name, path)
    return program.module(), info


def export_onnx(encoder: nn.Module, info: EncoderInfo, path: str | Path, *,
                sample_hw: tuple[int, int] = (224, 384), program=None) -> Path:
    """Write ``encoder`` as ONNX (input ``images``, outputs ``summary``, ``patch``; dynamic batch, H, W);
    ``program``: the output of :func:`trace`."""
    import onnx

    path = Path(path)
    program = program if program is not None else trace(encoder, info, sample_hw=sample_hw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
                                     output_names=list(OUTPUT_NAMES), verbose=False)
    model = onnx_program.model_proto
    _set_metadata(model, info)
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def _set_metadata(model, info: EncoderInfo) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()


def _check_name(info: EncoderInfo, expect_name: str | None, path: Path) -> None:
    if expect_name is not None and info.name != expect_name:
        raise ExportError(f"{path} holds encoder {info.name!r} ({info.precision}), not {expect_name!r}: pass the "
                          f"file exported for {expect_name!r} or select backbone={info.name}")


# ---- onnxruntime ------------------------------------------------------------------------------------------------
class OnnxEncoder:
    """An exported encoder run by onnxruntime, behind the same call as the torch encoder.

    ``OnnxEncoder(path)(images)`` takes normalised ``images [B,3,H,W]`` (torch or NumPy) and returns torch
    ``(summary [B,C], patch [B,C,H/stride,W/stride])``. The file's input and output names and shapes are
    checked against the contract when it is opened, and each call checks the output shapes.
    """

    def __init__(self, path: str | Path, *, expect_name: str | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX file {self.path} does not exist; write it with navsim_agents/run_export.py")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"onnxruntime cannot open {self.path} ({type(err).__name__}: {err})") from err
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ExportError(f"{self.path} has no '{METADATA_KEY}' metadata: export it with eupe.export so it "
                              "describes its encoder (name, stride, width, normalisation)")
        self.info = EncoderInfo.from_json(raw, where=str(self.path))
        _check_name(self.info, expect_name, self.path)
        self._check_signature()

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
        if names_in != [INPUT_NAME] or names_out != list(OUTPUT_NAMES):
            raise ExportError(f"{self.path}: inputs {names_in} / outputs {names_out} do not match the encoder "
                              f"contract ([{INPUT_NAME!r}] / {list(OUTPUT_NAMES)}); re-export with eupe.export")
        rank = [len(inputs[0].shape), len(outputs[0].shape), len(outputs[1].shape)]
        widths = [outputs[0].shape[1], outputs[1].shape[1]]
        if rank != [4, 2, 4] or any(isinstance(w, int) and w != self.info.embed_dim for w in widths):
            raise ExportError(f"{self.path}: shapes images {inputs[0].shape}, summary {outputs[0].shape}, patch "
                              f"{outputs[1].shape} do not match [B,3,H,W] -> [B,{self.info.embed_dim}], "
                              f"[B,{self.info.embed_dim},H/{self.info.stride},W/{self.info.stride}]")

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
        check_export_size(self.info, *x.shape[-2:])
        summary, patch = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x)})
        b, _, h, w = x.shape
        s, c = self.info.stride, self.info.embed_dim
        if summary.shape != (b, c) or patch.shape != (b, c, h // s, w // s):
            raise ExportError(f"{self.path}: outputs summary {summary.shape} / patch {patch.shape} for input "
                              f"{x.shape} break the contract ([{b},{c}] / [{b},{c},{h // s},{w // s}])")
        return torch.from_numpy(summary), torch.from_numpy(patch)


# ---- int8 -------------------------------------------------------------------------------------------------------
# Operators quantised to int8: the matrix products and convolutions that carry the FLOPs. Norms, softmax and GELU
# stay in float (onnxruntime QDQ keeps unlisted ops in fp32), which is what keeps ViT features close to fp32.
INT8_OPS = ("MatMul", "Gemm", "Conv")
# int8 recipes (benchmarks/edge.py --preset goal compares them):
# - dynamic: weight products only (MatMul with a constant operand), int8 per-channel weights, activations
#   quantised to uint8 per call (onnxruntime quantize_dynamic: DynamicQuantizeMatMul, MLAS u8s8 kernels, which
#   use VNNI where the CPU has it); no calibration; the attention products q@k, attn@v and softmax stay fp32.
# - static-weights: QDQ with calibrated activation ranges on the same weight products only.
# - static-all: QDQ on every MatMul/Gemm/Conv, the attention products included. onnxruntime then fuses
#   Q/DQ around softmax into QLinearSoftmax, which took more time than the int8 products saved (profiled on
#   an AMD EPYC with avx512_vnni: slower than fp32).
INT8_RECIPES = ("dynamic", "static-weights", "static-all")
DEFAULT_INT8_RECIPE = "dynamic"


class _Calibration:
    """onnxruntime ``CalibrationDataReader`` over normalised image batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def activation_products(model) -> list[str]:
    """Names of the ``MatMul`` nodes of an ONNX ``model`` whose operands are both activations (no initializer
    or constant): a ViT's attention products ``q @ k^T`` and ``attn @ v``."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def quantize_weight_products(fp32_path: str | Path, int8_path: str | Path, *, per_channel: bool = True) -> Path:
    """The ``dynamic`` recipe on any ONNX model (an encoder, a whole planner): every MatMul with a constant
    operand becomes int8 (weights per output channel when ``per_channel``), activation-activation products and
    everything else stay fp32; the file's ``metadata_props`` are kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    source = onnx.load(str(fp32_path))
    tmp = int8_path.with_name(int8_path.name + ".dyn.tmp")
    try:
        # onnxruntime's dynamic registry has MatMul, not Gemm (our exports write Linear as MatMul + Add)
        quantize_dynamic(str(fp32_path), str(tmp), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=activation_products(source))
        model = onnx.load(str(tmp))
        kept = {e.key for e in model.metadata_props}
        for entry in source.metadata_props:
            if entry.key not in kept:
                model.metadata_props.add(key=entry.key, value=entry.value)
        onnx.save(model, str(int8_path))
    finally:
        tmp.unlink(missing_ok=True)
    return int8_path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path,
                  calibration: Sequence[np.ndarray | torch.Tensor] = (), *, recipe: str = DEFAULT_INT8_RECIPE,
                  per_channel: bool = True) -> Path:
    """int8 quantisation of an exported encoder with ``recipe`` (one of :data:`INT8_RECIPES`): ``dynamic``
    (no calibration), or onnxruntime static QDQ (int8 weights per output channel when ``per_channel``, int8
    activations with MinMax ranges from ``calibration``, normalised image batches)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe not in INT8_RECIPES:
        raise ExportError(f"unknown int8 recipe {recipe!r}; use one of {list(INT8_RECIPES)}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    info = OnnxEncoder(fp32_path).info
    if info.precision != "fp32":
        raise ExportError(f"{fp32_path} is already {info.precision}; quantise the fp32 export")
    if recipe != "dynamic" and not calibration:
        raise ExportError(f"int8 recipe {recipe!r} needs at least one calibration image batch")
    batches = [b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float32)
               for b in calibration]
    for b in batches:
        check_export_size(info, *b.shape[-2:])
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = int8_path.with_name(int8_path.name + ".prep.onnx")
    tmp = int8_path.with_name(int8_path.name + ".tmp")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        if recipe == "dynamic":
            quantize_weight_products(prepared, tmp, per_channel=per_channel)
        else:
            excluded = activation_products(onnx.load(str(prepared))) if recipe == "static-weights" else []
            quantize_static(str(prepared), str(tmp), _Calibration(batches), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(INT8_OPS), per_channel=per_channel,
                            nodes_to_exclude=excluded, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True})
        model = onnx.load(str(tmp))
        _set_metadata(model, EncoderInfo(**{**asdict(info), "precision": "int8"}))
        onnx.save(model, str(tmp))
        tmp.replace(int8_path)
    finally:
        for leftover in (prepared, tmp):
            leftover.unlink(missing_ok=True)
    return int8_path


def feature_cosine(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Mean cosine of two encoders' outputs (float64): ``summary`` per image, ``patch`` per cell."""
    cos = torch.nn.functional.cosine_similarity
    return {"summary": float(cos(a[0].double(), b[0].double(), dim=-1).mean()),
            "patch": float(cos(a[1].double(), b[1].double(), dim=1).mean())}

