import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import mmdlib
from mmdlib.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmdlib", *args], capture_output=True, text=True)


@pytest.mark.parametrize("cmd,flags", [
    ("finetune", ["--model", "--dataset", "--features", "--kernel", "--budget", "--timestep-spacing", "--sampler",
                  "--batch-size", "--iterations", "--lr", "--seed", "--out", "--resume", "--overwrite",
                  "--checkpointing", "--memory-gib", "--precision", "--compile"]),
    ("evaluate", ["--model", "--budgets", "--features", "--n", "--seeds", "--inception-weights", "--precision",
                  "--timestep-spacing", "--reference", "--dinov2-weights"]),
    ("demo", ["--out", "--budget", "--iterations"]),
])
def test_help_lists_every_flag_with_its_default(cmd, flags):
    out = run_cli(cmd, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for f in flags:
        assert f in text, f
    assert "default" in text
    if cmd == "finetune":
        assert "(default: 5e-06)" in text and "(default: 128)" in text and "(default: cubic)" in text


@pytest.mark.parametrize("args,msg", [
    (["--model", "nope"], "model 'nope' is neither a known name"),
    (["--kernel", "gauss"], "unknown kernel 'gauss'"),
    (["--features", "vgg"], "unknown features 'vgg'"),
    (["--sampler", "euler"], "unknown sampler 'euler'"),
    (["--timestep-spacing", "cosine"], "unknown timestep_spacing 'cosine'"),
    (["--batch-size", "1"], "batch size 1 is too small"),
    (["--checkpointing", "some"], "unknown checkpointing setting 'some'; known: auto, all, none"),
    (["--memory-gib", "-1"], "memory_gib must be a finite number > 0"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "google/ddpm-cifar10-32"], "hf download google/ddpm-cifar10-32"),
])
def test_bad_input_is_one_clear_message(tmp_path, monkeypatch, capsys, args, msg):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    # the digits base model is not needed to reject these: patch its loader to a tiny stand-in
    from helpers import make_tiny_unet

    import mmdlib
    from mmdlib.models import LoadedModel
    real_load = mmdlib.models.load_model
    monkeypatch.setattr("mmdlib.load_model", lambda name, device="cpu": LoadedModel(
        make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny") if name == "digits"
        else real_load(name, device))
    rc = main(["finetune", "--out", str(tmp_path / "o"), "--iterations", "1", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_speed_flags_reach_the_config():
    from mmdlib.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["finetune", "--checkpointing", "all", "--memory-gib", "2.5",
                                                      "--precision", "fp32", "--compile", "off"]))
    assert (cfg.checkpointing, cfg.memory_gib, cfg.precision, cfg.compile) == ("all", 2.5, "fp32", "off")
    assert config_from_args(build_parser().parse_args(["finetune"])).checkpointing == "auto"
    assert build_parser().parse_args(["evaluate", "--precision", "bf16"]).precision == "bf16"


def test_budget_zero_via_cli(tmp_path, capsys, monkeypatch):
    from helpers import make_tiny_unet

    import mmdlib
    from mmdlib.models import LoadedModel
    monkeypatch.setattr("mmdlib.load_model", lambda name, device="cpu": LoadedModel(
        make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny"))
    assert main(["finetune", "--out", str(tmp_path / "o"), "--timesteps", "0"]) == 2  # the earlier spelling of --budget
    assert "budget must be an integer in 1..T=1000, got 0" in capsys.readouterr().err


def test_finetune_then_refuse_then_resume_via_cli(tmp_path, monkeypatch, capsys):
    from helpers import make_tiny_unet

    import mmdlib
    from mmdlib.models import LoadedModel
    monkeypatch.setattr("mmdlib.load_model", lambda name, device="cpu": LoadedModel(
        make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny"))
    args = ["finetune", "--features", "digits-a", "--batch-size", "4", "--budget", "2", "--out",
            str(tmp_path / "o"), "--save-every", "1", "--device", "cpu"]
    assert main([*args, "--iterations", "1"]) == 0
    assert main([*args, "--iterations", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--iterations", "2", "--resume"]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["iterations"] == 2 and (tmp_path / "o" / "finetuned" / "model_index.json").exists()


def test_demo_end_to_end_in_smoke_mode(tmp_path, monkeypatch):
    """The design card's demo contract, on the smoke-sized embedded default (seconds, numbers meaningless)."""
    from diffusers import DDIMPipeline

    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--iterations", "2", "--n", "100",
                 "--seeds", "1"]) in (0, None)
    out = tmp_path / "demo"
    m = json.loads((out / "metrics.json").read_text())
    assert {"fid_before", "fid_after", "feature_space", "budget"} <= set(m) and m["budget"] == 5
    assert m["feature_space"] == "digits-b" and m["fid_before"] > 0 and m["fid_after"] > 0
    for name in ("base", "finetuned"):
        pipe = DDIMPipeline.from_pretrained(out / name)
        assert json.loads((out / name / "mmdlib.json").read_text())["budget"] == 5
        assert pipe.scheduler.config.timestep_spacing == "leading"
    assert {p.name for p in out.glob("*.png")} == {"samples_before_5steps.png", "samples_after_5steps.png",
                                                   "samples_real.png"}
    # --overwrite replaces the demo's own files and keeps what a user put beside them
    mine = [out / "base" / "notes.md", out / "finetuned" / "unet" / "mine.txt", out / "samples" / "holiday.png",
            out / "my-notes.md"]
    for path in mine:
        path.write_text("mine")
    assert main(["demo", "--out", str(out), "--iterations", "1", "--n", "100", "--seeds", "1", "--overwrite"]) == 0
    assert all(path.read_text() == "mine" for path in mine)
    assert json.loads((out / "run.json").read_text())["iterations"] == 1


def test_evaluate_end_to_end_via_cli(tmp_path, capsys):
    from helpers import make_tiny_unet

    from mmdlib.export import save_pipeline

    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "tiny", budget=2)
    args = ["evaluate", "--model", str(folder), "--split", "test", "--budgets", "1,2", "--features", "digits-a",
            "--n", "20", "--seeds", "2", "--out", str(tmp_path / "scores.json")]
    assert main(args) == 0
    res = json.loads((tmp_path / "scores.json").read_text())
    assert set(res) == {"1", "2"} and len(res["2"]["digits-a"]["fid_per_seed"]) == 2
    assert json.loads(capsys.readouterr().out) == res
    for bad, msg in ((["--budgets", "5,abc"], "--budgets must be comma-separated integers"),
                     (["--seeds", "0"], "seeds must be between 1 and 256"), (["--sampler", "euler"], "unknown sampler 'euler'")):
        assert main([*args[:-2], *bad]) == 2
        assert msg in capsys.readouterr().err


def test_evaluate_scores_fd_dinov2_and_fid_sfid_against_an_adm_reference_batch_via_cli(
        tmp_path, capsys, monkeypatch, inception_weights, dinov2_file):
    from helpers import make_tiny_unet

    from mmdlib.data import TensorImages
    from mmdlib.export import save_pipeline

    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mmdlib.evaluate.get_dataset", lambda *a, **k: TensorImages(
        mmdlib.digits_dataset("test").images[:6]))  # ViT-L and Inception are slow on a CPU: few real images
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 2048))
    b = rng.normal(size=(50, 2023))
    np.savez(tmp_path / "VIRTUAL_tiny.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False), mu_s=b.mean(0),
             sigma_s=np.cov(b, rowvar=False))
    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "tiny", budget=1)
    assert main(["evaluate", "--model", str(folder), "--budgets", "1", "--n", "10", "--seeds", "1",
                 "--features", "inception,inception-spatial,dinov2", "--reference", str(tmp_path / "VIRTUAL_tiny.npz"),
                 "--inception-weights", str(inception_weights), "--dinov2-weights", str(dinov2_file)]) == 0
    res = json.loads(capsys.readouterr().out)["1"]
    assert set(res) == {"inception", "inception-spatial", "dinov2"}
    assert "kid" not in res["inception"] and "is" in res["inception"] and "kid" in res["dinov2"]  # dinov2: the data
    assert all(np.isfinite(res[s]["fid"]) for s in res)


def test_flags_not_given_come_from_the_preset_named_like_the_dataset():
    from mmdlib.cli import build_parser, config_from_args
    from mmdlib.config import FinetuneConfig
    from mmdlib.presets import PRESETS

    cfg = lambda *args: config_from_args(build_parser().parse_args(["finetune", *args]))
    assert cfg() == PRESETS["digits"].finetune  # digits-a features: runs offline, no Inception download
    assert cfg("--iterations", "3") == dataclasses.replace(PRESETS["digits"].finetune, iterations=3)
    assert cfg("--dataset", "cifar10") == PRESETS["cifar10"].finetune
    assert cfg("--dataset", "church", "--model", "church") == FinetuneConfig(model="church", dataset="church")
    assert cfg("--preset", "cifar10", "--lr", "1e-5", "--adam-betas", "0.5", "0.9") == dataclasses.replace(
        PRESETS["cifar10"].finetune, lr=1e-5, adam_betas=(0.5, 0.9))


def test_dropout_and_flip_flags():
    from mmdlib.cli import build_parser, config_from_args

    parse = lambda *a: config_from_args(build_parser().parse_args(["finetune", *a]))  # noqa: E731
    assert parse().dropout is None and parse().flip is False
    assert parse("--dropout", "0.1", "--flip", "yes").dropout == 0.1 and parse("--flip", "on").flip is True
    assert parse("--dropout", "none").dropout is None
    with pytest.raises(SystemExit):
        parse("--flip", "maybe")


def test_learning_the_timesteps_from_the_command_line(tmp_path, monkeypatch):
    from helpers import tiny_model

    from mmdlib.cli import build_parser, config_from_args

    parse = lambda *a: config_from_args(build_parser().parse_args(["finetune", *a]))  # noqa: E731
    assert parse("--learn-timesteps").learn_timesteps is True and parse().learn_timesteps is False  # a bare flag
    c = parse("--learn-timesteps", "yes", "--freeze-weights", "--timestep-lr", "0.2")
    assert (c.learn_timesteps, c.freeze_weights, c.timestep_lr) == (True, True, 0.2)
    monkeypatch.setattr("mmdlib.load_model", lambda name, device="cpu": tiny_model())
    args = ["finetune", "--features", "digits-a", "--batch-size", "4", "--budget", "2", "--iterations", "2",
            "--device", "cpu", "--learn-timesteps", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["identity"]["learn_timesteps"] is True and len(run["timesteps"]) == 2 and run["timesteps"][1] != 500
    assert main(["finetune", "--freeze-weights", "--out", str(tmp_path / "p")]) == 2  # nothing to learn
