"""Run settings: every value checked with a message naming what is allowed, never the hardware; what makes
two runs the same run."""
import dataclasses

import pytest

from mmdlib.config import EvalConfig, FinetuneConfig
from mmdlib.errors import MMDLibError


def test_every_setting_declares_its_group_and_only_method_settings_and_precision_make_a_run():
    from mmdlib.config import OFF_SINCE_0_1

    fields = dataclasses.fields(FinetuneConfig)
    assert {f.metadata["group"] for f in fields} == {"method", "execution", "output"}
    identity = set(FinetuneConfig().run_identity())  # settings added since 0.1.0 count only when on
    assert identity == {f.name for f in fields if f.metadata["group"] == "method"} - {"iterations", *OFF_SINCE_0_1,
                                                                                      "timestep_lr"} | {"precision"}
    on = FinetuneConfig(dropout=0.1, flip=True, learn_timesteps=True, freeze_weights=True)
    assert set(on.run_identity()) == identity | set(OFF_SINCE_0_1) | {"timestep_lr"}
    base = FinetuneConfig(out="a")
    for f in fields:  # what an output or execution setting is set to never makes another run
        if f.metadata["group"] != "method" and f.name != "precision":
            other = {"out": "b", "memory_gib": 3.0, "device": "cpu", "workers": 2, "save_every": 7,
                     "sample_every": 9, "checkpointing": "all", "compile": "off"}[f.name]
            assert dataclasses.replace(base, **{f.name: other}).run_identity() == base.run_identity(), f.name



@pytest.mark.parametrize("kw,msg", [
    ({"features": "vgg"}, "unknown features 'vgg'; known: inception, inception-spatial, clip, dinov2, digits-a, digits-b"),
    ({"kernel": "gauss"}, "unknown kernel 'gauss'; known: linear, cubic, rbf"),
    ({"sampler": "euler"}, "unknown sampler 'euler'; known: ddim, ddpm, dpmpp2m, unipc"),
    ({"timestep_spacing": "cosine"}, "unknown timestep_spacing 'cosine'; known: auto, linear, quadratic, trailing"),
    ({"precision": "fp16"}, "unknown precision setting 'fp16'; known: auto, fp32, bf16"),
    ({"device": "gpu"}, "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    ({"sampler": "unipc", "eta": 0.5}, "eta=0.5 applies to the ddim sampler only"),
    ({"iterations": 0}, "iterations must be >= 1, got 0"),
    ({"dropout": 1.0}, "dropout must be None .* or a probability in \\[0, 1\\), got 1.0"),
    ({"seed": 256}, "seed must be an integer in 0..255, got 256"),
])
def test_a_finetune_config_refuses_bad_values(kw, msg):
    with pytest.raises(MMDLibError, match=msg):
        FinetuneConfig(**kw).check()


def test_a_config_never_asks_the_hardware():
    # a device this machine lacks is a valid setting; whether it exists is asked when a run starts
    assert FinetuneConfig(device="cuda:7").check().device == "cuda:7"


@pytest.mark.parametrize("kw,msg", [
    ({"n": 1}, "n must be >= 10"), ({"features": ()}, "seeds, budgets and features must each name at least one"),
    ({"features": ("vgg",)}, "unknown feature space 'vgg'; known: inception"), ({"budgets": (5, 0)}, "budgets must be"),
    ({"precision": "fp16"}, "unknown evaluation precision 'fp16'; known: fp32, bf16"),
    ({"timestep_spacing": "cosine"}, "unknown timestep spacing 'cosine'"),
    ({"seeds": (0, 300)}, "seed must be an integer in 0..255, got 300"),
])
def test_an_evaluation_config_refuses_bad_values(kw, msg):
    with pytest.raises(MMDLibError, match=msg):
        EvalConfig(**kw).check()


def test_an_evaluation_config_takes_a_seed_count_one_space_and_resolves_auto_spacing():
    cfg = EvalConfig(seeds=3, features="digits-b", sampler="unipc", budgets=[5, 10])
    assert cfg.seeds == (0, 1, 2) and cfg.features == ("digits-b",) and cfg.budgets == (5, 10)
    assert cfg.spacing == "trailing" and EvalConfig().spacing == "linear"
    with pytest.raises(MMDLibError, match="seeds must be between 1 and 256"):
        EvalConfig(seeds=0)


def test_learning_the_timesteps_is_part_of_a_runs_identity_only_when_on():
    off = FinetuneConfig().run_identity()
    assert not {"learn_timesteps", "timestep_lr", "freeze_weights"} & set(off)  # runs from before keep theirs
    on = FinetuneConfig(learn_timesteps=True, timestep_lr=0.02).run_identity()
    assert on["learn_timesteps"] is True and on["timestep_lr"] == 0.02 and "freeze_weights" not in on
    assert FinetuneConfig(learn_timesteps=True, freeze_weights=True).run_identity()["freeze_weights"] is True
    with pytest.raises(MMDLibError, match="freeze_weights leaves nothing to learn unless learn_timesteps is on"):
        FinetuneConfig(freeze_weights=True).check()
    with pytest.raises(MMDLibError, match="timestep_lr must be a finite number > 0, got 0"):
        FinetuneConfig(learn_timesteps=True, timestep_lr=0).check()
