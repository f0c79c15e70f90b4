"""eupe/run_distill.py through Hydra: stage configs carry the recipe; tiny CPU run, cache build/read, resume."""

import logging
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from eupe.models import load_student
from eupe.student_checkpoint import read_student_meta

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="run_distill", overrides=list(overrides))


def test_stage_configs_follow_the_recipe():
    s1 = _cfg("distill=stage1_proxy").distill
    assert [t.name for t in s1.teachers] == ["pe-core-g", "pe-lang-g", "dinov3-h"]
    assert [t.img_size for t in s1.teachers] == [448, 448, 256]
    assert s1.heads.hidden == 1536 and s1.student.name == "proxy-g" and s1.normalizer.warmup_iters == 500
    s2 = _cfg("distill=stage2_student", "stages_root=/r").distill
    assert s2.heads.hidden == 3072 and s2.student.size == 256 and s2.max_steps == 390000
    assert s2.optim.lr == 2e-5 and s2.optim.weight_decay == 1e-4
    assert s2.teachers[0].weights == "/r/stage1_proxy/student.safetensors"
    s3 = _cfg("distill=stage3_multires", "stages_root=/r").distill
    assert list(s3.student.pyramid) == [256, 384, 512] == list(s3.teacher_pyramid)
    assert s3.max_steps == 100000 and s3.optim.lr == 1e-5 and s3.init_from == "/r/stage2_student/student.safetensors"
    assert s2.batch_size * 32 == 8192 and s3.batch_size * 32 == 4096  # global batches on 32 GPUs
    for s in (s1, s2, s3):
        assert (s.loss.patch_cos_weight, s.loss.patch_smooth_l1_weight) == (0.9, 0.1)
        # LVD-1689M + 10% ImageNet-1k; EUPE ssl_default_config.yaml global crop scale, torchvision ratios
        assert [src.share for src in s.data.sources] == [0.9, 0.1]
        assert list(s.data.augment.crop_scale) == [0.32, 1.0] and s.data.augment.hflip == 0.5
        assert s.normalizer.warmup_iters == 500


def test_tiny_run_cache_and_resume(tmp_path):
    from eupe import run_distill

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    try:
        common = [f"stages_root={tmp_path}", "distill.max_steps=4", "cache_shard_rows=64",
                  "distill.data.sources.0.num_images=64"]
        run_distill.build_cache(_cfg(*common, "cache=build"))
        export = run_distill.train(_cfg(*common, "cache=read"))
        meta = read_student_meta(export)
        assert meta["recipe"]["cache"] == "read" and meta["recipe"]["steps"] == 4
        assert meta["recipe"]["teacher_weights"] == {"teacher_a": "cache", "teacher_b": "cache"}
        first, _ = load_student(export)
        # resume: the same command with more steps continues from checkpoints/last.ckpt
        export = run_distill.train(_cfg(*common[:1], "distill.max_steps=6", *common[2:], "cache=read"))
        assert read_student_meta(export)["recipe"]["steps"] == 6
        second, _ = load_student(export)
        diff = sum((a - b).abs().sum() for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
        assert diff > 0
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
