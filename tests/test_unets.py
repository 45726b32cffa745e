"""ImprovedUNet2DModel: UNet2DModel with a fixed head count, a timestep scale and a GroupNorm before every
attention, saved and loaded like any diffusers model."""
import torch

from mmdlib.convert import unet_for
from mmdlib.unets import UNET_CLASSES, ImprovedUNet2DModel


def small(heads=4, scale=1.0):
    torch.manual_seed(0)
    return unet_for("improved-diffusion", 8, 3, (32, 64), 1, (False, True), heads=heads, timestep_scale=scale).eval()


def test_the_timestep_scale_feeds_the_network_t_times_the_scale():
    scaled, plain = small(scale=0.25), small(scale=1.0)
    plain.load_state_dict(scaled.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100, 3000])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, t).sample, plain(x, t.float() * 0.25).sample)
        torch.testing.assert_close(scaled(x, 100).sample[:1], scaled(x[:1], torch.tensor([100])).sample)


def test_the_head_count_is_fixed_whatever_the_width_and_survives_a_round_trip(tmp_path):
    m = small(heads=4)
    widths = {a.inner_dim: a.heads for a in m.modules() if type(a).__name__ == "Attention"}
    assert widths == {64: 4} and all(a.group_norm is not None for a in m.modules() if type(a).__name__ == "Attention")
    m.save_pretrained(tmp_path / "u")
    again = UNET_CLASSES["ImprovedUNet2DModel"].from_pretrained(tmp_path / "u").eval()
    assert isinstance(again, ImprovedUNet2DModel) and again.config.attention_heads == 4
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(again(x, t).sample, m(x, t).sample)
