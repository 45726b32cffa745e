"""LearnedTimesteps: a schedule that starts exactly at a spacing, stays strictly ascending inside its range
whatever its parameters, and carries a gradient for them."""
import pytest
import torch

import mmdlib
from mmdlib.timesteps import LearnedTimesteps


@pytest.mark.parametrize("spacing", ["linear", "quadratic", "trailing"])
@pytest.mark.parametrize("budget", [1, 2, 3, 5, 10, 20])
def test_it_starts_exactly_at_the_spacing_and_stays_ascending_in_range(spacing, budget):
    m = LearnedTimesteps(budget, 1000, spacing)
    assert m().tolist() == [float(t) for t in mmdlib.timestep_subset(budget, 1000, spacing)]
    g = torch.Generator().manual_seed(budget)
    for scale in (0.1, 1.0, 5.0):
        with torch.no_grad():
            m.logits.copy_(scale * torch.randn(m.logits.shape, generator=g, dtype=torch.float64))
        t = m()
        assert (t.diff() > 0).all() and t.min() >= 0 and t.max() <= 999, t


def test_an_end_the_spacing_touches_stays_and_every_other_timestep_moves():
    for spacing, pinned in (("linear", 0), ("trailing", 4)):
        m = LearnedTimesteps(5, 1000, spacing)
        m().sum().backward()
        with torch.no_grad():
            m.logits.add_(0.3 * torch.randn_like(m.logits))
        t, start = m(), torch.tensor(mmdlib.timestep_subset(5, 1000, spacing), dtype=torch.float64)
        moved = (t - start).abs() > 1e-9
        assert not moved[pinned] and moved.sum() == 4, (spacing, t)
        assert torch.isfinite(m.logits.grad).all() and m.logits.grad.abs().sum() > 0


def test_explicit_starts_a_minimum_and_a_round_trip_through_its_state():
    m = LearnedTimesteps(3, 1000, [10.5, 300.0, 990.25], t_min=5.0)
    assert m().tolist() == [10.5, 300.0, 990.25]
    with torch.no_grad():
        m.logits.add_(0.1)
        m.logits[0] -= 2.0
    again = LearnedTimesteps(3, 1000, [10.5, 300.0, 990.25], t_min=5.0)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again(), m()) and m().min() >= 5.0
    for bad, msg in (({"init": "cosine"}, "unknown timestep spacing 'cosine'"),
                     ({"init": [5.0, 3.0, 9.0]}, "strictly ascending"),
                     ({"init": [1.0, 2.0]}, "2 initial timesteps for a budget of 3"),
                     ({"init": [1.0, 2.0, 3.0], "t_min": 2.0}, "t_min must lie in 0..1")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            LearnedTimesteps(3, 1000, **bad)
