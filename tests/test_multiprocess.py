"""Several processes (accelerate launch, gloo on the CPU) compute the same global-batch MMD and the same
weights as one process with the whole batch."""
import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.export import save_pipeline

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pipeline(make_tiny_unet(1, 8), path, budget=2)
    mmdlib.get_feature_extractor("digits-a")  # build the classifier once, before processes race for it
    return path


def finetune_args(model_dir, out, *extra):
    return ["finetune", "--model", str(model_dir), "--dataset", "digits", "--features", "digits-a",
            "--budget", "2", "--batch-size", "8", "--iterations", "2", "--lr", "1e-3", "--grad-clip", "100",
            "--save-every", "1", "--device", "cpu", "--out", str(out), *extra]


def launch(n, args, script=None):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    target = [script] if script else ["-m", "mmdlib"]
    cmd = ([sys.executable] if n == 1 else
           [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"])
    return subprocess.run(cmd + target + args, capture_output=True, text=True, env=env, timeout=600)


def assert_same_weights(a: dict, b: dict) -> None:
    # The attention key bias shifts every logit of a softmax row equally, so its true gradient is zero;
    # Adam blows its rounding noise up to full-size steps, which differ with the summation order.
    for k in a:
        if not k.endswith("to_k.bias"):
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def losses(out):
    return [float(r["loss"]) for r in csv.DictReader((out / "log.csv").open())]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir) -> dict[int, Path]:
    """2 iterations on 1 process and on 2 processes (the resume test copies them on)."""
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path_factory.mktemp("runs") / f"p{n}"
        res = launch(n, finetune_args(tiny_model_dir, runs[n]))
        assert res.returncode == 0, res.stderr[-3000:]
    return runs


def test_two_processes_equal_one_process_with_the_whole_batch(two_runs):
    one, two = two_runs[1], two_runs[2]
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a = mmdlib.load_model(str(one / "finetuned")).unet.state_dict()
    b = mmdlib.load_model(str(two / "finetuned")).unet.state_dict()
    start = make_tiny_unet(1, 8).state_dict()
    assert not torch.allclose(a["conv_in.weight"], start["conv_in.weight"])
    assert_same_weights(a, b)
    # only the main process wrote: one log row per iteration
    assert len(losses(two)) == 2


def test_resume_with_a_different_number_of_processes(tmp_path, tiny_model_dir, two_runs):
    # the 2-process run resumed to 4 iterations on 1 process == the 1-process run resumed on 2 processes
    # (and resuming on the same count reaches an uninterrupted run's weights: test_finetune)
    for started, resumed_on in ((2, 1), (1, 2)):
        out = shutil.copytree(two_runs[started], tmp_path / f"{started}-then-{resumed_on}")
        more = finetune_args(tiny_model_dir, out, "--resume")
        more[more.index("--iterations") + 1] = "4"
        res = launch(resumed_on, more)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = tmp_path / "2-then-1", tmp_path / "1-then-2"
    assert len(losses(a)) == 4 and losses(a) == pytest.approx(losses(b), rel=1e-5)
    assert_same_weights(mmdlib.load_model(str(a / "finetuned")).unet.state_dict(),
                        mmdlib.load_model(str(b / "finetuned")).unet.state_dict())


def test_a_failing_rank_leaves_no_half_written_checkpoint(tmp_path, tiny_model_dir):
    script = tmp_path / "fail_rank1.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys, time
        from mmdlib.finetune import Finetuner
        real = Finetuner.loss
        def loss(self, it, *a):
            if it == 1 and self.procs.rank == 1:
                # a rank dies mid-run, once the main one has recorded iteration 1's checkpoint (dying
                # earlier races the launcher, which kills the main process wherever it is)
                for _ in range(600):
                    if json.loads(self.folder.run_file.read_text()).get("iteration") == 1:
                        break
                    time.sleep(0.1)
                os._exit(3)
            return real(self, it, *a)
        Finetuner.loss = loss
        from mmdlib.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    out = tmp_path / "f"
    res = launch(2, finetune_args(tiny_model_dir, out), script=str(script))
    assert res.returncode != 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["iteration"] == 1 and all(torch.isfinite(v).all() for v in ckpt["unet"].values())
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint.pt")]


def test_notebook_launcher_gives_the_single_process_losses(tmp_path):
    # A notebook's entry point: accelerate.notebook_launcher(finetune, ...), here in a fresh interpreter.
    script = tmp_path / "nb.py"
    script.write_text(textwrap.dedent(f"""
        import csv, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import mmdlib
        from accelerate import notebook_launcher
        from helpers import make_tiny_unet
        from mmdlib.config import FinetuneConfig
        from mmdlib.finetune import finetune
        from mmdlib.models import LoadedModel

        def run(out):
            m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
            cfg = FinetuneConfig(features="digits-a", budget=2, batch_size=8, iterations=2, lr=1e-3, out=out,
                                 device="cpu")
            finetune(m, mmdlib.digits_dataset("train"), cfg, progress=False)

        if __name__ == "__main__":
            notebook_launcher(run, ({str(tmp_path / 'nb')!r},), num_processes=2)
            run({str(tmp_path / 'one')!r})
    """))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(tmp_path / "nb") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
