"""Random streams by purpose: disjoint by construction, per sample, and never a training latent in evaluation."""
import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.config import EvalConfig, FinetuneConfig
from mmdlib.devices import Processes
from mmdlib.evaluate import evaluate
from mmdlib.export import save_pipeline
from mmdlib.finetune import Finetuner, train_seeds
from mmdlib.models import load_model
from mmdlib.presets import PRESETS
from mmdlib.streams import MAX_INDEX, MAX_SEED, PURPOSES, stream_seed

ROOT = Path(__file__).resolve().parents[1]


def test_torch_cpu_generators_only_see_32_bits_so_streams_fit_in_them():
    # Why the layout is a 32-bit field: seeds that differ above bit 31 draw the same numbers.
    a, b = (torch.randn(4, generator=torch.Generator().manual_seed(s)) for s in (7, 7 + 2**32))
    assert torch.equal(a, b)
    top = stream_seed(PURPOSES[-1], MAX_SEED, MAX_INDEX)
    assert top < 2**32 and stream_seed(PURPOSES[0], 0, 0) == 0


def _parameters(nb: Path) -> dict:
    cell = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse("".join(cell["source"])).body
            if isinstance(n, ast.Assign) for t in n.targets}


def _ranges_in_use() -> dict[tuple[str, int], range]:
    """Every (purpose, seed) -> draws that the CLI defaults, the presets, the demo and the book's notebooks use."""
    params = [_parameters(nb) for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    most_iterations = max([FinetuneConfig().iterations] + [p.finetune.iterations for p in PRESETS.values()]
                          + [v for p in params for k, v in p.items() if "iterations" in k and isinstance(v, int)])
    batch = max([FinetuneConfig().batch_size] + [p.finetune.batch_size for p in PRESETS.values()])
    evals = [EvalConfig()] + [p.evaluation for p in PRESETS.values()]
    seeds = max([len(e.seeds) for e in evals] + [p.get("seeds") or 1 for p in params])  # None: the preset's
    n = max([e.n for e in evals] + [p.get("n_samples") or 0 for p in params])
    used = {("train", 0): range(most_iterations * batch), ("real-batch", 0): range(most_iterations),
            ("grid", 0): range(64), ("interpolation", 0): range(8), ("toy", 0): range(4),
            ("memory-plan", 0): range(batch)}
    used.update({("eval", s): range(n) for s in range(seeds)})
    return used


def test_streams_are_disjoint_over_every_range_in_use():
    used = _ranges_in_use()
    assert used[("train", 0)].stop >= 400 * 128 and len([k for k in used if k[0] == "eval"]) >= 3
    seen: dict[int, tuple] = {}
    for (purpose, seed), draws in used.items():
        seeds = mmdlib.stream_seeds(purpose, seed, draws)
        assert len(set(seeds)) == len(seeds) and max(seeds) < 2**32
        for s in seeds:
            assert s not in seen, f"{purpose}/{seed} shares a generator seed with {seen[s]}"
            seen[s] = (purpose, seed)


def test_training_seeds_are_per_sample_whatever_the_process_count():
    cfg = FinetuneConfig(batch_size=8)
    whole = train_seeds(cfg, 3, Processes())
    assert whole == mmdlib.stream_seeds("train", 0, range(24, 32))
    shares = []
    for rank in (0, 1):
        procs = Processes()
        procs.rank, procs.world = rank, 2
        shares += train_seeds(cfg, 3, procs)
    assert shares == whole


@pytest.mark.parametrize("call,msg", [
    (lambda: stream_seed("train", MAX_SEED + 1, 0), "seed must be an integer in 0..255, got 256"),
    (lambda: stream_seed("train", -1, 0), "seed must be an integer in 0..255"),
    (lambda: stream_seed("eval", 0, MAX_INDEX + 1), "has draws 0..2,097,151, asked for draw 2,097,152"),
    (lambda: stream_seed("noise", 0, 0), "unknown random stream 'noise'; known: train, real-batch, eval"),
    (lambda: FinetuneConfig(iterations=20000, batch_size=128).check(), "2,560,000 generated samples"),
    (lambda: FinetuneConfig(seed=300).check(), "got 300"),
    (lambda: EvalConfig(n=3_000_000).check(), "asked for draw 2,999,999"),
])
def test_out_of_range_draws_are_refused(call, msg):
    with pytest.raises(mmdlib.MMDLibError, match=msg):
        call()


@pytest.mark.parametrize("sampler,kw", [("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.5}), ("ddpm", {})])
def test_the_first_in_chain_noise_is_independent_of_x_T(sampler, kw):
    # With eps = 0 the first step is x_s = sqrt(a_s / a_t) x_T + sigma z, and the last step (to x_0) only
    # rescales; so z can be read back from the result. Reusing x_T's seed made z == x_T exactly (corr 1).
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    steps, seeds = [500, 999], list(range(40, 296))
    x0 = mmdlib.sample_seeded(lambda x, t: torch.zeros_like(x), seeds, (1, 8, 8), steps, ac, sampler, **kw)
    x_T = mmdlib.noise(seeds, (1, 8, 8))
    a_t, a_s = ac[999].item(), ac[500].item()
    sigma = (kw.get("eta", 1.0) * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)))
    z = (x0 * np.sqrt(a_s) - np.sqrt(a_s / a_t) * x_T) / sigma
    corr = np.corrcoef(z.flatten().numpy(), x_T.flatten().numpy())[0, 1]
    assert abs(corr) < 0.03 and abs(z.std().item() - 1) < 0.03


def _record_first_inputs(unet, top: int, store: list):
    """Record x_T: the rows the network gets at the chain's first (highest) timestep."""
    forward = unet.forward

    def recording(x, t, *a, **k):
        if int(t.flatten()[0]) == top:
            store.append(x.detach().clone())
        return forward(x, t, *a, **k)

    unet.forward = recording


def test_evaluating_a_finetuned_model_never_feeds_it_a_latent_it_was_trained_on(tmp_path):
    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "tiny", budget=2)
    model, steps = load_model(str(folder)), mmdlib.timestep_subset(2)
    trained, scored = [], []
    cfg = FinetuneConfig(model=str(folder), dataset="digits", split="test", features="digits-a", budget=2,
                         batch_size=8, lr=1e-3, iterations=12, device="cpu", out=str(tmp_path / "run"),
                         sample_every=1000, save_every=1000)
    ft = Finetuner(model, mmdlib.digits_dataset("test"), cfg, progress=False)
    _record_first_inputs(ft.unet, steps[-1], trained)
    ft.run()
    trained = torch.cat(trained)
    _record_first_inputs(ft.model.unet, steps[-1], scored)
    evaluate(ft.model, EvalConfig(dataset="digits", split="test", budgets=(2,), features=("digits-a",), n=50, seeds=2),
             progress=False)
    scored = torch.cat(scored)
    # the recorder saw what it should: a grid, the 12 training batches (the run's "train" draws), a grid; then
    # the "eval" draws of seeds 0 and 1 (so a stream mix-up would show as a zero distance below)
    latents = lambda purpose, seed, n: mmdlib.noise(mmdlib.stream_seeds(purpose, seed, range(n)), (1, 8, 8))
    grid = latents("grid", 0, 64)
    torch.testing.assert_close(trained, torch.cat([grid, latents("train", 0, 12 * 8), grid]))
    torch.testing.assert_close(scored, torch.cat([latents("eval", 0, 50), latents("eval", 1, 50)]))
    d = torch.cdist(scored.flatten(1), trained.flatten(1))
    assert d.min() > 1.0  # no evaluation x_T is a training (or grid) x_T: distinct Gaussian draws sit ~11 apart


def test_a_stochastic_finetune_records_its_sampler_and_eta(tmp_path):
    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "tiny", budget=2)
    for sampler, eta in (("ddpm", 0.0), ("ddim", 0.5)):
        cfg = FinetuneConfig(model=str(folder), dataset="digits", split="test", features="digits-a", budget=2,
                             batch_size=4, iterations=1, device="cpu", out=str(tmp_path / sampler), sampler=sampler,
                             eta=eta)
        out = Finetuner(load_model(str(folder)), mmdlib.digits_dataset("test"), cfg, progress=False).run()
        meta = load_model(str(out)).meta
        assert (meta["sampler"], meta["eta"]) == (sampler, eta if sampler == "ddim" else None)
        assert meta["finetune"]["sampler"] == sampler
    with pytest.raises(mmdlib.MMDLibError, match="eta=0.5 applies to the ddim sampler only"):
        dataclasses.replace(cfg, sampler="ddpm").check()
