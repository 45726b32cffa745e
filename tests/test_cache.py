import json
import os
import subprocess
import sys

import pytest

from mmdlib.cache import cache_dir, cached


def test_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text(str(len(calls)))

    a, a2, b = cached("k", {"v": 1}, build), cached("k", {"v": 1}, build), cached("k", {"v": 2}, build)
    assert a == a2 != b and len(calls) == 2 and cache_dir() == tmp_path
    assert (a / "x.txt").read_text() == "1" and (b / "x.txt").read_text() == "2"


def test_the_cache_log_lists_what_was_built_not_what_was_found(tmp_path, monkeypatch):
    # book/build.py reads it to name what the notebooks computed beyond its plan
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMDLIB_CACHE_LOG", str(tmp_path / "log.jsonl"))
    a = cached("k", {"v": 1}, lambda f: None)
    cached("k", {"v": 1}, lambda f: None)
    with pytest.raises(ValueError):  # a failed build is not an entry
        cached("k", {"v": 2}, lambda f: (_ for _ in ()).throw(ValueError()))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == [{"kind": "k", "key": a.name, "pid": os.getpid()}]


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))

    def build(folder):
        (folder / "half.bin").write_bytes(b"12")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached("k", {"v": 1}, build)
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.endswith(".lock")] == []
    ok = cached("k", {"v": 1}, lambda f: (f / "y").write_text("ok"))
    assert (ok / "y").read_text() == "ok"


def test_second_process_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    first = cached("k", {"v": 3}, lambda f: (f / "y").write_text("built"))
    code = ("from mmdlib.cache import cached\n"
            "def boom(f): raise SystemExit('built twice')\n"
            "print(cached('k', {'v': 3}, boom))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(first)


def _keys(model, extractor, ft_cfg, eval_cfg, device="cpu"):
    """The three downstream keys (as cache folder names): reference features, a finetune, one seed's scores."""
    from mmdlib.cache import config_key, full_key
    from mmdlib.evaluate import reference_key, score_key
    from mmdlib.experiments import finetune_key

    ref = reference_key("digits", "test", extractor)
    return {"reference": config_key(full_key(ref)),
            "finetune": config_key(full_key(finetune_key(model, extractor, ft_cfg, device))),
            "scores": config_key(full_key(score_key(model.identity(), eval_cfg, 5, 0, [0, 200, 400, 600, 800], ref,
                                                    device)))}


def test_every_ingredient_changes_every_key_downstream_of_it(monkeypatch):
    import copy
    import dataclasses

    import torch
    from helpers import make_tiny_unet

    import mmdlib
    import mmdlib.cache
    from mmdlib.config import EvalConfig, FinetuneConfig
    from mmdlib.models import LoadedModel

    model = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    fx = mmdlib.get_feature_extractor("digits-a")
    ft, ev = FinetuneConfig(features="digits-a", device="cpu"), EvalConfig()
    base = _keys(model, fx, ft, ev)
    changed = lambda **kw: {k for k, v in _keys(**{"model": model, "extractor": fx, "ft_cfg": ft, "eval_cfg": ev,
                                                   **kw}).items() if v != base[k]}

    other_weights = copy.deepcopy(fx)
    with torch.no_grad():
        other_weights.net.fc[1].bias[0] += 1e-4
    other_weights._weights_hash = None
    assert changed(extractor=other_weights) == {"reference", "finetune", "scores"}
    assert changed(extractor=mmdlib.get_feature_extractor("digits-b")) == {"reference", "finetune", "scores"}
    other_model = LoadedModel(copy.deepcopy(model.unet), model.alphas_cumprod, "the same name")
    with torch.no_grad():
        other_model.unet.conv_out.bias[0] += 1e-6
    assert changed(model=other_model) == {"finetune", "scores"}
    assert changed(model=LoadedModel(model.unet, model.alphas_cumprod, "/another/path")) == set()  # not by path
    for setting in ({"lr": 1e-5}, {"sampler": "ddpm"}, {"eta": 0.5}, {"kernel": "rbf"}, {"seed": 1},
                    {"precision": "bf16"}, {"iterations": 7}):
        assert changed(ft_cfg=dataclasses.replace(ft, **setting)) == {"finetune"}, setting
    assert changed(ft_cfg=dataclasses.replace(ft, precision="fp32")) == set()  # "auto" resolves to fp32 on a CPU
    assert changed(ft_cfg=dataclasses.replace(ft, save_every=3, out="elsewhere", checkpointing="all")) == set()
    assert changed(device="cuda") == {"finetune", "scores"}  # auto precision resolves to bf16 there
    for setting in ({"n": 100}, {"sampler": "ddpm"}, {"eta": 0.5}, {"precision": "bf16"}):
        assert changed(eval_cfg=dataclasses.replace(ev, **setting)) == {"scores"}, setting
    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    assert changed() == {"reference", "finetune", "scores"}
    monkeypatch.delenv("MMDLIB_SMOKE")
    monkeypatch.setattr(mmdlib.cache, "RESULTS_VERSION", mmdlib.cache.RESULTS_VERSION + 1)
    assert changed() == {"reference", "finetune", "scores"}


@pytest.mark.slow
def test_a_smoke_build_and_a_real_evaluation_share_no_cache_entry(monkeypatch):
    # in the tests' shared cache, where the book's smoke build and the real classifiers already are
    import mmdlib.cache
    from mmdlib import experiments as ex
    from mmdlib.config import FinetuneConfig

    used: dict[str, set] = {"smoke": set(), "real": set()}
    key = mmdlib.cache.config_key
    for mode in ("smoke", "real"):
        monkeypatch.setenv("MMDLIB_SMOKE", "1" if mode == "smoke" else "0")
        monkeypatch.setattr(mmdlib.cache, "config_key", lambda c, m=mode: used[m].add(key(c)) or key(c))
        run = ex.finetuned(FinetuneConfig(model="digits", dataset="digits", split="test", features="digits-a",
                                          batch_size=8, iterations=1, device="cpu"), progress=False)
        ex.scores(run, dataset="digits", split="test", budgets=[5], features=["digits-a", "digits-b"], n=20, seeds=1,
                  progress=False)
    # classifiers and base model (smoke only: the real ones ship), reference features, finetune, scores
    assert len(used["smoke"]) >= 8 and len(used["real"]) >= 4
    assert not used["smoke"] & used["real"]
