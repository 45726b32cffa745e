"""Named settings: the paper's four datasets as its text sets them, the digits default, and settings(name,
**overrides), which the notebooks build theirs with."""
import dataclasses

import pytest

from mmdlib.errors import MMDLibError
from mmdlib.presets import PRESETS, SMOKE, get_preset, settings


def test_each_paper_dataset_has_a_preset_following_the_papers_text():
    from mmdlib.paper_models import PAPER_MODELS
    from mmdlib.reported import DATASET_TABLE, TABLES

    for name in PAPER_MODELS:
        ft, ev = PRESETS[name].finetune, PRESETS[name].evaluation
        assert (ft.model, ft.dataset, ft.split, ft.features) == (name, name, "train", "inception")
        assert (ft.batch_size, ft.lr, tuple(ft.adam_betas), ft.adam_eps, ft.kernel, ft.sampler, ft.eta) == (
            128, 5e-6, (0.9, 0.999), 1e-8, "cubic", "ddim", 0.0)  # Sec. IV-A
        assert ft.dropout is None and ft.flip is False  # the text says nothing of either (the code does both)
        assert ev.features == ("inception", "clip") and ev.n == 50000 and ev.split == "train"
        assert [f"|T|={b}" for b in ev.budgets] == TABLES[DATASET_TABLE[name]]["columns"]

        assert PRESETS[name].measure == "clip" and PRESETS[name].spaces == ("inception", "clip")
        assert PRESETS[name].iterations_at(20) == 500  # the paper's iterations at every budget


def test_the_digits_preset_optimises_one_classifier_and_measures_with_the_other():
    p = get_preset("digits")
    assert p.spaces == ("digits-a", "digits-b") and p.evaluation.features == p.spaces
    assert (p.finetune.budget, p.finetune.iterations, p.many_steps, p.many_steps_seeds) == (5, 400, 100, 1)
    assert [p.iterations_at(b) for b in (5, 10, 20)] == [400, 100, 100]
    assert p.finetune_at(10, sampler="unipc") == dataclasses.replace(p.finetune, budget=10, iterations=100,
                                                                     sampler="unipc")
    get_preset("digits").finetune.iterations = 1  # a copy: the registry is unchanged
    assert PRESETS["digits"].finetune.iterations == 400


def test_settings_override_each_config_where_the_setting_lives_and_none_keeps_the_presets():
    s = settings("cifar10", dataset="folder", data_root="data/x", iterations=7, n=10, seeds=2, model=None,
                 measure="inception-spatial", many_steps=50)
    assert (s.finetune.dataset, s.finetune.data_root, s.finetune.iterations, s.finetune.model) == (
        "folder", "data/x", 7, "cifar10")
    assert (s.evaluation.dataset, s.evaluation.data_root, s.evaluation.n, s.evaluation.seeds) == (
        "folder", "data/x", 10, (0, 1))
    assert (s.measure, s.many_steps) == ("inception-spatial", 50)
    assert settings("digits") == get_preset("digits")
    # the notebooks' way to an ADM reference batch and FD_DINOv2: evaluation settings like any other
    s = settings("imagenet64", reference="VIRTUAL_imagenet64_labeled.npz", measure="dinov2")
    assert s.evaluation.reference == "VIRTUAL_imagenet64_labeled.npz" and "dinov2" in s.evaluation.features


@pytest.mark.parametrize("kw,msg", [
    ({"iterations": "abc"}, "setting 'iterations' must be int, got 'abc'"),
    ({"iterations": 2.5}, "setting 'iterations' must be int, got 2.5"),
    ({"lr": "fast"}, "setting 'lr' must be float, got 'fast'"),
    ({"flip": 1}, "setting 'flip' must be bool, got 1"),
    ({"budgets": 5}, "setting 'budgets' must be tuple"),
    ({"iteration": 3}, "unknown setting\\(s\\) iteration; known: "),
])
def test_settings_refuse_a_wrong_type_or_an_unknown_name_even_in_smoke_mode(kw, msg):
    for smoke in (False, True):  # checked before smoke shrinks the run
        with pytest.raises(MMDLibError, match=msg):
            settings("digits", smoke=smoke, **kw)


def test_smoke_shrinks_the_run_whatever_was_asked():
    s = settings("digits", smoke=True, iterations=300)
    assert (s.finetune.iterations, s.iterations_long, s.evaluation.n, s.evaluation.seeds) == (2, 2, 100, (0,))
    assert (s.many_steps, s.many_steps_seeds) == (SMOKE["many_steps"], 1)


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(MMDLibError, match="unknown preset 'mnist'; known presets: digits, cifar10, celeba64"):
        get_preset("mnist")
