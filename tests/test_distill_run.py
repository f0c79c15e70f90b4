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


def test_finished_stage_folder_is_not_rewritten_by_another_configuration(tmp_path):
    import json

    import pytest

    from eupe import run_distill
    from eupe.config_errors import ConfigError

    logging.disable(logging.WARNING)
    try:
        common = [f"stages_root={tmp_path}", "distill.max_steps=2", "distill.batch_size=8",
                  "distill.data.sources.0.num_images=16"]
        export = run_distill.run(_cfg(*common))
        stage = export.parent
        before = {p.relative_to(stage): p.read_bytes() for p in stage.rglob("*") if p.is_file()}
        assert json.loads((stage / "config.json").read_text())["distill"]["optim"]["lr"] == 3e-3
        assert not (stage / ".hydra").exists()
        other = _cfg(*common, "distill.optim.lr=0.1", "cache=read")  # would also fail at start: no cache
        with pytest.raises(ConfigError, match=r"holds a finished student.safetensors made by another configuration "
                                              r"\(cache: 'online' -> 'read', distill.optim.lr: 0.003 -> 0.1\)"):
            run_distill.run(other)
        with pytest.raises(SystemExit, match="configuration error"):
            run_distill.main(other)
        after = {p.relative_to(stage): p.read_bytes() for p in stage.rglob("*") if p.is_file()}
        assert after == before
        # more steps continue the same run; overwrite=true lets another recipe replace the student
        assert run_distill.run(_cfg(*common[:1], "distill.max_steps=3", *common[2:])) == export
        run_distill.run(_cfg(*common, "distill.optim.lr=0.1", "overwrite=true"))
        assert json.loads((stage / "config.json").read_text())["distill"]["optim"]["lr"] == 0.1
    finally:
        logging.disable(logging.NOTSET)


def test_damaged_teacher_cache_shard_is_named_then_rebuilt_to_the_same_bytes(tmp_path):
    import pytest

    from eupe import run_distill
    from eupe.distill.cache import TeacherCache, TeacherCacheError

    logging.disable(logging.WARNING)
    try:
        cfg = _cfg(f"stages_root={tmp_path}", "cache=build", "distill.batch_size=8", "cache_shard_rows=8",
                   "distill.data.sources.0.num_images=32")
        run_distill.build_cache(cfg)
        shards = sorted((tmp_path / "cache" / "tiny_cpu").glob("shard-*.safetensors"))
        assert len(shards) == 4
        original = {p.name: p.read_bytes() for p in shards}
        shards[2].write_bytes(original[shards[2].name][:200])
        with pytest.raises(TeacherCacheError, match=r"shard-00002.safetensors cannot be read .*cache=build again"):
            TeacherCache(tmp_path / "cache" / "tiny_cpu")
        torch.rand(5)  # another global RNG state: the rebuilt rows must not depend on it
        run_distill.build_cache(cfg)
        assert {p.name: p.read_bytes() for p in shards} == original
        assert len(TeacherCache(tmp_path / "cache" / "tiny_cpu").shards) == 4
    finally:
        logging.disable(logging.NOTSET)
