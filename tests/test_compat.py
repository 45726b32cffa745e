"""0.1.0's names that moved in 0.2 still work for one release, each with a DeprecationWarning naming the new
place; the CLI's earlier flag spellings still parse, with a note."""
import pytest
import torch
from helpers import TinyFeatures, tiny_model

import mmdlib
import mmdlib.export
import mmdlib.models
import mmdlib.notebook
from mmdlib import evaluate as ev
from mmdlib import experiments as ex
from mmdlib import generate, metrics
from mmdlib.config import FinetuneConfig


@pytest.mark.parametrize("module,name,now", [
    (ev, "grid_samples", generate.grid_samples), (ev, "fid_from_features", metrics.fid_from_features),
    (ev, "kid_from_features", metrics.kid_from_features),
    (ev, "extractors_for", mmdlib.features.get_feature_extractors),
    (ex, "config", FinetuneConfig), (ex, "check_parameters", mmdlib.notebook.check_parameters),
    (mmdlib.models, "save_pipeline", mmdlib.export.save_pipeline),
])
def test_a_moved_name_warns_and_is_the_new_object(module, name, now):
    with pytest.warns(DeprecationWarning, match=f"{module.__name__}.{name} is deprecated and goes in 0.3"):
        assert getattr(module, name) is now
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_the_loss_function_and_evaluates_old_keywords_still_work():
    from mmdlib.loss import MMDDDMLoss, mmd_ddm_loss

    model, fx, real, settings = tiny_model(), TinyFeatures(), torch.rand(4, 16), {}
    settings = dict(shape=(1, 8, 8), timesteps=[0, 500], alphas_cumprod=model.alphas_cumprod)
    with torch.no_grad(), pytest.warns(DeprecationWarning, match="use MMDDDMLoss"):
        old = mmd_ddm_loss(model.unet, fx, real, [1, 2, 3], **settings)
    with torch.no_grad():
        assert old.item() == MMDDDMLoss(fx, **settings)(model.unet, real, [1, 2, 3]).item()
    kw = dict(dataset="digits", split="test", budgets=(1,), n=10, seeds=1, progress=False)
    with pytest.warns(DeprecationWarning, match="use features="):
        assert ev.evaluate(model, spaces=("digits-a",), **kw) == ev.evaluate(model, features=("digits-a",), **kw)


def test_the_clis_earlier_spellings_parse_with_a_note(capsys):
    from mmdlib.cli import build_parser, config_from_args

    a = build_parser().parse_args(["finetune", "--timesteps", "7", "--schedule", "trailing"])
    assert (config_from_args(a).budget, config_from_args(a).timestep_spacing) == (7, "trailing")
    a = build_parser().parse_args(["convert", "x.ckpt", "--out", "o", "--timesteps", "2000", "--schedule", "cosine"])
    assert (a.num_train_timesteps, a.beta_schedule) == (2000, "cosine")
    err = capsys.readouterr().err
    assert "--timesteps is now spelt --budget" in err and "--timesteps is now spelt --num-train-timesteps" in err
    assert "--schedule is now spelt --beta-schedule" in err
