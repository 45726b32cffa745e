"""Each iteration's real features: precomputed once or streamed per batch, the same either way."""
import torch
from helpers import TinyFeatures

import mmdlib
from mmdlib.real_features import PrecomputedReal, StreamedReal, batch_indices


def test_streamed_and_precomputed_real_features_agree_in_any_order(monkeypatch):
    ds, fx = mmdlib.digits_dataset("train"), TinyFeatures()
    pre = PrecomputedReal(ds, fx, batch=16, seed=3, device="cpu")
    streamed = StreamedReal(ds, fx, batch=16, seed=3, device="cpu", end=4)
    for it in (0, 1, 2, 7, 3, 4, 5, 0):  # in order, a jump, back, past `end`
        torch.testing.assert_close(streamed(it), pre(it))



def test_an_iterations_batch_is_drawn_without_replacement_and_with_it_when_the_data_is_small():
    idx = batch_indices(100, 32, seed=0, it=5)
    assert len(set(idx)) == 32 and max(idx) < 100 and idx == batch_indices(100, 32, seed=0, it=5)
    assert idx != batch_indices(100, 32, seed=0, it=6) and idx != batch_indices(100, 32, seed=1, it=5)
    small = batch_indices(10, 32, seed=0, it=5)
    assert len(small) == 32 and set(small) <= set(range(10))
