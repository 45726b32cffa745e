import dataclasses
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

import mmdlib
from mmdlib.cache import file_hash
from mmdlib.pretrain import DigitsModelConfig, digits_model_path, make_unet, train_ddpm

TINY = DigitsModelConfig(block_out_channels=(8, 16), iterations=30, batch_size=16, warmup=5)


def test_training_lowers_the_denoising_loss():
    # eq. (5) on the digits: the trained EMA model predicts the noise better than its initialisation.
    cfg = DigitsModelConfig(block_out_channels=(8, 16), iterations=150, batch_size=32, warmup=10, ema_decay=0.9)
    images = mmdlib.digits_dataset("all").images[:256]
    init = make_unet(cfg)
    trained = train_ddpm(make_unet(cfg), images, cfg, progress=False)

    def loss(m):
        g = torch.Generator().manual_seed(0)
        ac = mmdlib.alphas_cumprod(mmdlib.linear_betas()).float()
        x0, t = images * 2 - 1, torch.randint(1000, (len(images),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        with torch.no_grad():
            return (m(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample - eps).square().mean().item()

    assert loss(trained) < 0.5 * loss(init)


def test_cached_model_loads_through_load_model_and_in_a_second_process():
    path = digits_model_path(TINY, progress=False)
    assert digits_model_path(TINY) == path
    m = mmdlib.load_model(str(path))
    assert m.sample_shape == (1, 8, 8) and m.T == 1000
    code = ("import mmdlib.pretrain as p\n"
            "p.train_ddpm = lambda *a, **k: (_ for _ in ()).throw(SystemExit('retrained'))\n"
            "print(p.digits_model_path(p.DigitsModelConfig(block_out_channels=(8, 16), iterations=30, "
            "batch_size=16, warmup=5)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(path)
    assert digits_model_path(DigitsModelConfig(block_out_channels=(8, 16), iterations=31, batch_size=16,
                                               warmup=5), progress=False) != path


def test_the_config_alone_determines_the_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    weights = []
    for i, folder in enumerate(("a", "b")):
        monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / folder))
        torch.randn(17 * (i + 1))  # whatever the process did before must not matter
        path = digits_model_path(TINY, progress=False)
        weights.append(load_file(path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_training_runs_on_cuda_when_there_is_one_and_the_cache_key_names_it(tmp_path, monkeypatch):
    # CUDA mocked on the CPU: the model, the images and every batch are sent to "cuda", the entry is cached
    # apart from the CPU-trained one (whose key has no device field, as before), and moving is all that changes
    from helpers import fake_cuda
    from safetensors.torch import load_file

    cfg = dataclasses.replace(TINY, iterations=3)
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    cpu = digits_model_path(cfg, progress=False)
    sent = fake_cuda(monkeypatch)
    cuda = digits_model_path(cfg, progress=False)
    assert cuda != cpu and "device" not in json.loads((cpu / "config.json").read_text())
    assert json.loads((cuda / "config.json").read_text())["device"] == "cuda"
    assert Counter(tuple(p.shape) for p in make_unet(cfg).parameters()) <= Counter(sent)
    assert (len(mmdlib.digits_dataset("all")), 1, 8, 8) in sent and sent.count((16, 1, 8, 8)) == 3  # noise
    weights = [load_file(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (cpu, cuda)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_default_recipe_loads_the_shipped_weights_verified_by_hash(tmp_path, monkeypatch):
    import shutil

    import mmdlib.pretrain as pretrain

    path = digits_model_path()
    assert path == pretrain.SHIPPED and json.loads((path / "recipe.json").read_text()) == json.loads(
        json.dumps(dataclasses.asdict(DigitsModelConfig())))
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    assert file_hash(weights) == pretrain.SHIPPED_SHA256 and weights.stat().st_size < 8 * 2**20
    m = mmdlib.load_model("digits")
    assert m.sample_shape == (1, 8, 8) and m.T == 1000
    # a damaged copy is refused, not used
    damaged = tmp_path / "digits"
    shutil.copytree(path, damaged)
    data = bytearray((damaged / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    data[-1] ^= 1
    (damaged / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pretrain, "SHIPPED", damaged)
    with pytest.raises(mmdlib.MMDLibError, match="does not match its hash"):
        mmdlib.load_model("digits")


def test_one_command_regenerates_a_recipe(tmp_path, monkeypatch, capsys):
    import mmdlib.pretrain as pretrain

    monkeypatch.setattr(pretrain, "DigitsModelConfig", lambda: TINY)
    pretrain.main(["--out", str(tmp_path / "m"), "--seed", "3"])
    out = capsys.readouterr().out
    sha = file_hash(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors")
    assert f"sha256 {sha}" in out and '"seed": 3' in (tmp_path / "m" / "recipe.json").read_text()
    assert mmdlib.load_model(str(tmp_path / "m")).sample_shape == (1, 8, 8)


def test_the_digit_classifiers_ship_and_one_command_regenerates_them_bit_for_bit(tmp_path):
    """The classifiers' weights are shipped (their hash checked), so no machine trains its own; the command
    that made them, run here in a process with 2 threads, gives the same files byte for byte (it trains on
    one thread: their weights would otherwise depend on the machine's thread count)."""
    import mmdlib.classifiers as classifiers

    out = subprocess.run([sys.executable, "-m", "mmdlib.pretrain", "--classifiers", str(tmp_path)],
                         capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    for name, sha in classifiers.CLASSIFIER_SHA256.items():
        assert file_hash(tmp_path / f"{name}.safetensors") == sha == file_hash(classifiers.CLASSIFIERS / f"{name}.safetensors")
        assert f"{name}.safetensors: sha256 {sha}" in out.stdout


def test_digit_features_do_not_depend_on_the_thread_count_from_an_empty_cache(tmp_path):
    code = ("import sys, torch\nfrom mmdlib.features import get_feature_extractor\n"
            "from mmdlib.data import digits_dataset\nx = digits_dataset('test').images[:300].float()\n"
            "torch.save({s: get_feature_extractor(s)(x) for s in ('digits-a', 'digits-b')}, sys.argv[1])\n")
    env = __import__("os").environ
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{threads}.pt")], capture_output=True,
                             text=True, env={**env, "OMP_NUM_THREADS": str(threads),
                                             "MMDLIB_CACHE": str(tmp_path / f"cache{threads}")})
        assert out.returncode == 0, out.stderr
    one, two = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    assert all(torch.equal(one[s], two[s]) for s in one)


def test_a_damaged_shipped_classifier_is_refused_and_smoke_mode_trains_its_own(tmp_path, monkeypatch):
    import shutil

    import mmdlib.classifiers as classifiers

    shutil.copytree(classifiers.CLASSIFIERS, tmp_path / "classifiers")
    path = tmp_path / "classifiers" / "digits-a.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    monkeypatch.setattr(classifiers, "CLASSIFIERS", tmp_path / "classifiers")
    with pytest.raises(mmdlib.MMDLibError, match="shipped digit classifier .* does not match its hash"):
        classifiers.digits_classifier("digits-a")
    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    net, acc, mean, std, cfg = classifiers.digits_classifier("digits-a")
    assert cfg.epochs == 1 and (tmp_path / "cache" / "digits-net").is_dir()
