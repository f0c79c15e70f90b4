"""eupe/run_distill.py beyond one fp32 process: bf16-mixed, DDP and FSDP2 over 2 CPU processes (gloo).

The DDP / FSDP runs launch ``run_distill.train`` in a subprocess (Lightning re-launches it once more for rank
1), with a per-rank probe that records the sample indices each rank trained on, every file write and the
student's tensors on that rank. The reference is one process with the same global batch (2 x 8 = 16): with
mean-reduced losses, averaged gradients and all-reduced normaliser statistics, data-parallel training is the
same computation, so the exported students must agree to fp32 round-off.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from eupe.models import load_student
from eupe.student_checkpoint import load_student_tensors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# tiny_cpu with 4 steps of a 16-image global batch over 64 images: one epoch, every image seen once
COMMON = ["distill=tiny_cpu", "distill.max_steps=4", "distill.data.sources.0.num_images=64",
          "distill.ema_decay=0.5", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
          "trainer.checkpoint_every_n_steps=2"]

# Runs train() with a probe; rank 1 is the same script re-launched by Lightning's subprocess launcher.
DRIVER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import numpy as np
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir

    import eupe.distill.export as export
    from eupe import run_distill

    writes = []
    _torch_save, _save_file = torch.save, export.save_file

    def torch_save(obj, f, *args, **kwargs):  # Lightning checkpoints go through torch.save
        writes.append("torch.save")
        return _torch_save(obj, f, *args, **kwargs)

    def save_file(tensors, path, *args, **kwargs):  # the exported student
        writes.append("student:" + str(path))
        return _save_file(tensors, path, *args, **kwargs)

    torch.save, export.save_file = torch_save, save_file

    class Probe(pl.Callback):
        """Per rank: indices trained on, the student's local tensors, and every file write of this process."""

        def __init__(self, probe_dir):
            self.probe_dir, self.indices = probe_dir, []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.indices.append(batch["index"].tolist())

        def on_fit_end(self, trainer, module):  # after the run's own export (its callback comes first)
            from torch.distributed.tensor import DTensor

            rank = trainer.global_rank
            local = {k: (v.to_local() if isinstance(v, DTensor) else v).detach().float().numpy()
                     for k, v in module.student.state_dict().items()}
            np.savez(self.probe_dir / f"rank{rank}_student.npz", **local)
            (self.probe_dir / f"rank{rank}.json").write_text(json.dumps(
                {"rank": rank, "world": trainer.world_size, "indices": self.indices, "writes": writes}))


    if __name__ == "__main__":  # ddp_spawn workers import this file again as __mp_main__
        torch.set_num_threads(1)
        probe_dir, configs, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
        with initialize_config_dir(config_dir=configs, version_base=None):
            cfg = compose(config_name="run_distill", overrides=overrides)
        run_distill.train(cfg, callbacks=(Probe(probe_dir),))
''')


def _group_members(pgid: int) -> list[int]:
    """Live processes (zombies included) of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def run_ranks(tmp_path: Path, name: str, overrides: list[str], *, timeout: float = 150) -> dict[int, dict]:
    """Run the driver in its own session; return per-rank probe records. No process may outlive it."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    probe_dir = tmp_path / f"probe_{name}"
    probe_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, str(driver), str(probe_dir), str(CONFIGS), *overrides],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{name}: run did not finish in {timeout} s:\n{out[-3000:]}")
    deadline = time.monotonic() + 15
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = _group_members(proc.pid)
    if leftover:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"{name} failed:\n{out[-4000:]}"
    assert not leftover, f"{name}: processes {leftover} outlived the run"
    records = {}
    for path in sorted(probe_dir.glob("rank*.json")):
        rec = json.loads(path.read_text())
        rec["student"] = dict(np.load(probe_dir / f"rank{rec['rank']}_student.npz"))
        records[rec["rank"]] = rec
    return records


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """Reference: one process, global batch 16. Returns (probe record, exported student, initial student)."""
    from eupe import run_distill

    tmp = tmp_path_factory.mktemp("single")
    overrides = [*COMMON, f"stages_root={tmp}", "trainer.devices=1", "distill.batch_size=16"]
    records = run_ranks(tmp, "single", overrides)
    # train() seeds, then builds the module: the same order gives the student it started from
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run_distill", overrides=overrides)
    logging.disable(logging.WARNING)
    try:
        pl.seed_everything(int(cfg.distill.seed))
        initial = run_distill.build_module(cfg.distill).student.state_dict()
    finally:
        logging.disable(logging.NOTSET)
    return records[0], tmp / "tiny_cpu" / "student.safetensors", initial


def _student_tensors(path: Path) -> dict[str, torch.Tensor]:
    groups, _ = load_student_tensors(path)
    return groups["student"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _check_data_parallel_run(records: dict, ref_indices: list, export: Path, single) -> None:
    _, single_export, initial = single
    assert sorted(records) == [0, 1] and all(r["world"] == 2 for r in records.values())
    # each rank trained on its own half of every global batch: disjoint, and together the reference batch
    assert len(records[0]["indices"]) == len(records[1]["indices"]) == len(ref_indices)
    for step, batch in enumerate(ref_indices):
        a, b = records[0]["indices"][step], records[1]["indices"][step]
        assert len(a) == len(b) == 8 and not set(a) & set(b)
        assert sorted(a + b) == sorted(batch)
    # only rank 0 wrote checkpoints and the exported student
    assert records[1]["writes"] == []
    assert "torch.save" in records[0]["writes"]
    assert any(w.startswith("student:") and export.name in w for w in records[0]["writes"])
    assert (export.parent / "checkpoints" / "last.ckpt").is_file()
    # the exported student (EMA) equals the single-process one, and training did move it
    ours = _student_tensors(export)
    worst = _max_diff(ours, _student_tensors(single_export))
    assert worst < 1e-5, f"data-parallel student differs from the single-process one by {worst}"
    assert _max_diff(ours, initial) > 1e-3
    _, meta = load_student(export)
    assert meta["recipe"]["world_size"] == 2 and meta["recipe"]["steps"] == 4


def test_training_parts_pickle_for_ddp_spawn(tmp_path):
    # ddp_spawn pickles the module and datamodule into each worker (a full ddp_spawn run of this config
    # matches the single-process student to 6e-8 as well, but costs ~35 s on 2 shared cores)
    import pickle

    from eupe import run_distill

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run_distill", overrides=[*COMMON, f"stages_root={tmp_path}", "distill.batch_size=8"])
    logging.disable(logging.WARNING)
    try:
        module, datamodule = run_distill.build_training(cfg)
        copy = pickle.loads(pickle.dumps(datamodule))
        pickle.dumps(module)
    finally:
        logging.disable(logging.NOTSET)
    halves = [copy.plan(rank=r, world_size=2).batch(0) for r in (0, 1)]
    one = datamodule.plan(rank=0, world_size=1)  # one process, batch 8: the 2 x 8 global batch is its first two
    assert sorted(halves[0] + halves[1]) == sorted(one.batch(0) + one.batch(1)) and len(halves[0]) == 8


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, single_process):
    records = run_ranks(tmp_path, "ddp", [*COMMON, f"stages_root={tmp_path}", "trainer.devices=2",
                                          "trainer.strategy=ddp", "distill.batch_size=8"])
    export = tmp_path / "tiny_cpu" / "student.safetensors"
    _check_data_parallel_run(records, single_process[0]["indices"], export, single_process)
    # DDP keeps a full replica per rank: both ranks end with identical student weights
    s0, s1 = records[0]["student"], records[1]["student"]
    assert s0.keys() == s1.keys() and all(np.array_equal(s0[k], s1[k]) for k in s0)


@pytest.mark.slow
def test_fsdp2_two_cpu_processes_match_one_process_and_resume(tmp_path, single_process):
    args = [*COMMON, f"stages_root={tmp_path}", "trainer.devices=2", "trainer.strategy=fsdp", "distill.batch_size=8"]
    # stop after 2 steps, then the same command with 4 steps resumes from last.ckpt (gathered on rank 0)
    run_ranks(tmp_path, "fsdp_first", [*args, "distill.max_steps=2"])
    records = run_ranks(tmp_path, "fsdp", args)
    export = tmp_path / "tiny_cpu" / "student.safetensors"
    _check_data_parallel_run(records, single_process[0]["indices"][2:], export, single_process)
    # FSDP shards the student: each rank holds half of every sharded tensor (rows split over 2 ranks)
    full = _student_tensors(export)
    s0, s1 = records[0]["student"], records[1]["student"]
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight"):
        assert s0[key].shape[0] == s1[key].shape[0] == full[key].shape[0] // 2


def test_fsdp1_on_cpu_says_it_needs_cuda():
    from eupe import run_distill

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run_distill", overrides=["trainer.accelerator=cpu", "trainer.strategy=fsdp1"])
    with pytest.raises(ValueError, match=r"fsdp1 .* needs CUDA GPUs.*requires a GPU accelerator.*non-CPU accelerator"):
        run_distill._strategy(cfg, None)


class _PrecisionProbe(pl.Callback):
    """Records the dtype of a Linear output in a teacher and in the student, and every step's loss."""

    def __init__(self) -> None:
        self.dtypes: dict[str, set] = {"teacher": set(), "student": set()}
        self.losses: list[float] = []

    def on_train_start(self, trainer, module):
        def hook(kind):
            return lambda mod, args, out: self.dtypes[kind].add(out.dtype)

        teacher = next(iter(module._teachers.values()))
        teacher.model.blocks[0].attn.qkv.register_forward_hook(hook("teacher"))
        module.student.blocks[0].attn.qkv.register_forward_hook(hook("student"))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_bf16_mixed_on_cpu_runs_teachers_and_student_in_bf16(tmp_path):
    from eupe import run_distill
    from rap_backbone.backbones import build_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose(config_name="run_distill", overrides=[
                *COMMON, f"stages_root={tmp_path}", "trainer.devices=1", "trainer.precision=bf16-mixed",
                "distill.batch_size=16"])
        probe = _PrecisionProbe()
        export = run_distill.train(cfg, callbacks=(probe,))
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
    # teachers (precision auto) follow the step's bf16 autocast on CPU; so does the student
    assert probe.dtypes == {"teacher": {torch.bfloat16}, "student": {torch.bfloat16}}
    assert len(probe.losses) == 4 and all(np.isfinite(probe.losses))
    # a fresh student's loss per term is about 1 - cos ~ 1 per cosine term: 2 teachers x (1 + 0.9 + small)
    assert 2.0 < probe.losses[0] < 6.0
    # master weights stay fp32; the exported student loads through both loaders and gives finite features
    model, meta = load_student(export)
    assert meta["recipe"]["precision"] == "bf16-mixed" and meta["recipe"]["steps"] == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    backbone = build_backbone("student", weights=str(export))
    summary, patch = backbone(torch.rand(2, 3, 32, 32))
    assert summary.shape == (2, 32) and patch.shape == (2, 32, 4, 4) and torch.isfinite(patch).all()


def test_teacher_precision_modes():
    from eupe.teachers import build_teacher

    t = build_teacher("timm:vit_small_patch16_dinov3", img_size=32, embed_dim=32, depth=1, num_heads=2,
                      patch_size=8, num_reg_tokens=0)
    cpu = torch.device("cpu")
    assert not t.runs_bf16(cpu)  # auto, plain CPU call: fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert t.runs_bf16(cpu)
    x = torch.rand(2, 3, 32, 32)
    fp32 = t(x).patch
    t.precision = "bf16"
    bf16 = t(x).patch
    assert bf16.dtype == torch.float32  # outputs are returned in fp32 either way
    rel = float((bf16 - fp32).norm() / fp32.norm())
    assert 0 < rel < 0.05  # bf16 rounding (8-bit mantissa), not a different function
    with pytest.raises(ValueError, match="precision 'fp16' unknown"):
        build_teacher("timm:vit_small_patch16_dinov3", img_size=32, embed_dim=32, depth=1, num_heads=2,
                      patch_size=8, num_reg_tokens=0, precision="fp16")
