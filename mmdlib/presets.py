"""Named settings: a finetuning config and an evaluation config that belong together.

The demo, the CLI's evaluation defaults and the notebooks' ``parameters`` cells use the ``digits`` preset
(the tests check every notebook's defaults against the preset its parameters cell names);
``cifar10``, ``celeba64``, ``imagenet64`` and ``church`` are the paper's settings for its four datasets
(Sec. IV-A: Inception features, FID_CLIP held out, 50,000 samples against the training set, the budgets of
Tables 1-4).
"""
from __future__ import annotations

import dataclasses

from .errors import MMDLibError
from .evaluate import EvalConfig
from .finetune import FinetuneConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    finetune: FinetuneConfig
    evaluation: EvalConfig
    reference_budget: int = 100  # the many-step budget whose FID the few-step gap is measured to
    reference_seeds: int = 1  # its evaluation seeds: at 20 times the steps per sample of 5, one is the cost of most

    @property
    def measure(self) -> str:
        """The held-out space: it only measures (the last evaluation space that is not optimised)."""
        return [s for s in self.evaluation.spaces if s != self.finetune.features][-1]


PRESETS: dict[str, Preset] = {
    "digits": Preset(
        FinetuneConfig(model="digits", dataset="digits", split="all", features="digits-a", budget=5,
                       iterations=400, save_every=50, sample_every=100),
        EvalConfig(dataset="digits", split="all", spaces=("digits-a", "digits-b"), budgets=(5, 10, 20), n=5000,
                   seeds=(0, 1, 2)),
    ),
    # the paper's four datasets as its text sets them (Sec. IV-A): batch 128, Adam lr 5e-6, cubic kernel, DDIM
    # with sigma = 0 over linear steps, Inception features, FID_CLIP held out, 50,000 samples against the training
    # set, the budgets of its table; the official code differs in places (the book's reference chapter lists how)
    **{name: Preset(
        FinetuneConfig(model=name, dataset=name, split="train", features="inception", budget=5, iterations=500),
        EvalConfig(dataset=name, split="train", spaces=("inception", "clip"), budgets=budgets, n=50000, seeds=(0,)))
       for name, budgets in (("cifar10", (5, 10, 15, 20)), ("celeba64", (5, 10, 15, 20)), ("imagenet64", (5, 10, 20)),
                             ("church", (5, 10, 20)))},
}


def get_preset(name: str) -> Preset:
    """The preset registered as ``name`` (a copy: changing it does not change the registry)."""
    if name not in PRESETS:
        raise MMDLibError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    p = PRESETS[name]
    return dataclasses.replace(p, finetune=dataclasses.replace(p.finetune), evaluation=dataclasses.replace(p.evaluation))
