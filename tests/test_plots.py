"""Figures: grids, rows and metric-versus-steps plots."""
import torch


def test_figures():
    import matplotlib

    matplotlib.use("Agg")
    from mmdlib.plots import metric_vs_steps, show_grids, show_rows

    x = torch.rand(16, 1, 8, 8)
    assert len(show_grids({"a": x, "b": torch.rand(16, 3, 8, 8)}).axes) == 2
    assert len(show_rows({"r0": x[:5], "r1": x[:3]}).axes) == 10
    res = {"m": {5: {"s": {"fid": 3.0}}, 10: {"s": {"fid": 2.0}}}}
    ax = metric_vs_steps(res, "s")
    assert list(ax.lines[0].get_ydata()) == [3.0, 2.0]
