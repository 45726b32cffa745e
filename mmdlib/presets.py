"""Named settings: a finetuning config, the evaluation config that goes with it, and what the book's chapters
measure around them (the held-out space, the many-step budget, the iterations at longer budgets).

``digits`` is the embedded offline default (the demo, the CLI's defaults, the notebooks); ``cifar10``,
``celeba64``, ``imagenet64`` and ``church`` are the paper's settings for its four datasets (Sec. IV-A:
Inception features, FID_CLIP held out, 50,000 samples against the training set, the budgets of Tables 1-4).
``settings(name, **overrides)`` is a preset with some settings changed: the notebooks build theirs with it.
"""
from __future__ import annotations

import dataclasses

from .config import EvalConfig, FinetuneConfig
from .errors import MMDLibError


@dataclasses.dataclass(frozen=True)
class Preset:
    finetune: FinetuneConfig
    evaluation: EvalConfig
    measure: str  # the held-out feature space: it only measures (the loss uses finetune.features)
    many_steps: int = 100  # the many-step budget whose FID the few-step gap is measured to
    many_steps_seeds: int = 1  # its evaluation seeds: at 20 times the steps per sample of 5, one is the cost of most
    iterations_long: int | None = 100  # iterations at budgets above finetune.budget (None: as finetune.iterations)

    def iterations_at(self, budget: int) -> int:
        """Adam iterations for a model finetuned for ``budget`` steps: the preset's own above its budget is
        ``iterations_long`` (an iteration through 20 steps costs four times one through 5)."""
        if budget <= self.finetune.budget or self.iterations_long is None:
            return self.finetune.iterations
        return self.iterations_long

    def finetune_at(self, budget: int, **changes) -> FinetuneConfig:
        """The finetune config for ``budget`` steps, with ``iterations_at(budget)`` unless ``changes`` (any other
        settings) say otherwise."""
        return dataclasses.replace(self.finetune, **{"budget": budget, "iterations": self.iterations_at(budget),
                                                     **changes})

    @property
    def spaces(self) -> tuple[str, str]:
        """(the optimised space, the held-out one)."""
        return self.finetune.features, self.measure


def _paper(name: str, budgets: tuple[int, ...]) -> Preset:
    # the paper's text (Sec. IV-A): batch 128, Adam lr 5e-6, cubic kernel, DDIM with sigma = 0 over linear steps,
    # Inception features, FID_CLIP held out, 50,000 samples against the training set, the budgets of its table,
    # 500 iterations at every budget;
    # the official code differs in places (the book's reference chapter lists how)
    return Preset(FinetuneConfig(model=name, dataset=name, split="train", features="inception", budget=5,
                                 iterations=500),
                  EvalConfig(dataset=name, split="train", features=("inception", "clip"), budgets=budgets, n=50000,
                             seeds=(0,)), measure="clip", iterations_long=None)


PRESETS: dict[str, Preset] = {
    "digits": Preset(
        FinetuneConfig(model="digits", dataset="digits", split="all", features="digits-a", budget=5,
                       iterations=400, save_every=50, sample_every=100),
        EvalConfig(dataset="digits", split="all", features=("digits-a", "digits-b"), budgets=(5, 10, 15, 20), n=5000,
                   seeds=(0, 1, 2)), measure="digits-b"),
    **{name: _paper(name, budgets) for name, budgets in (
        ("cifar10", (5, 10, 15, 20)), ("celeba64", (5, 10, 15, 20)), ("imagenet64", (5, 10, 20)),
        ("church", (5, 10, 20)))},
}

# MMDLIB_SMOKE=1 (tests and CI): a few iterations and samples, meaningless numbers
SMOKE = {"iterations": 2, "iterations_long": 2, "n": 100, "seeds": 1, "many_steps": 10, "many_steps_seeds": 1}


def get_preset(name: str) -> Preset:
    """The preset registered as ``name`` (a copy: changing it does not change the registry)."""
    if name not in PRESETS:
        raise MMDLibError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    p = PRESETS[name]
    return dataclasses.replace(p, finetune=dataclasses.replace(p.finetune), evaluation=dataclasses.replace(p.evaluation))


def _fields(cls) -> dict[str, str]:
    """A dataclass's field names and their annotations, as strings."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _fits(value, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, {"int": int, "float": (int, float), "str": str, "bool": bool}[kind])


def _check_type(name: str, value, annotation: str) -> None:
    """Refuse ``value`` for setting ``name`` unless it fits ``annotation`` (the field's type as written; a
    tuple setting also takes a list, and seeds a count)."""
    if annotation.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) or (name == "seeds" and _fits(value, "int"))
    else:
        ok = any(_fits(value, kind) for kind in annotation.split(" | "))
    if not ok:
        raise MMDLibError(f"setting {name!r} must be {annotation.replace(' | ', ' or ')}, got {value!r} "
                          f"({type(value).__name__}).")


def settings(name: str = "digits", smoke: bool = False, **overrides) -> Preset:
    """The preset ``name`` with ``overrides``: a ``FinetuneConfig`` field changes the finetune config, an
    ``EvalConfig`` field the evaluation config, a field both have (dataset, split, data_root, sampler, eta,
    timestep_spacing) both, and ``measure``, ``many_steps``, ``many_steps_seeds``, ``iterations_long`` the
    preset itself. ``features`` is the optimised space; the evaluation scores in it and in ``measure``.
    ``None`` keeps the preset's value (a notebook parameter left at None). Values are checked against each
    setting's type before ``smoke`` (MMDLIB_SMOKE) shrinks the run to seconds (``SMOKE``)."""
    p = get_preset(name)
    ft, ev, own = _fields(FinetuneConfig), _fields(EvalConfig), _fields(Preset)
    own = {k: v for k, v in own.items() if k not in ("finetune", "evaluation")}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(ft) - set(ev) - set(own)
    if unknown:
        raise MMDLibError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(set(ft) | set(ev) | set(own)))}.")
    for k, v in given.items():
        _check_type(k, v, ft.get(k) or ev.get(k) or own[k])
    if smoke:
        given = {**given, **SMOKE}
    pick = lambda names: {k: v for k, v in given.items() if k in names and k != "features"}  # noqa: E731
    finetune = dataclasses.replace(p.finetune, **pick(ft), **({"features": given["features"]} if "features" in given
                                                            else {}))
    p = dataclasses.replace(p, finetune=finetune, **pick(own))
    return dataclasses.replace(p, evaluation=dataclasses.replace(p.evaluation, **pick(ev), features=p.spaces))

