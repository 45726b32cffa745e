"""Small fixtures shared by the tests."""
import torch
from diffusers import UNet2DModel

import mmdlib
from mmdlib.features import write_random_inception_weights  # noqa: F401  (the tests' name for it)


def make_tiny_unet(channels: int = 3, size: int = 8, seed: int = 0) -> UNet2DModel:
    """A tiny random UNet2DModel with the DDPM CIFAR-10 block layout (resnet + attention blocks)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def tiny_model(seed: int = 0, channels: int = 1, size: int = 8):
    """``make_tiny_unet`` as a LoadedModel with the linear schedule over 1000 steps."""
    from mmdlib.models import LoadedModel

    return LoadedModel(make_tiny_unet(channels, size, seed), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")


def fake_cuda(monkeypatch) -> list[tuple[int, ...]]:
    """A mocked CUDA runtime on the CPU: mmdlib's device selection picks "cuda" for "auto", and a tensor or
    module sent to "cuda" stays on the CPU. Returns the shapes of the tensors sent there (parameters and
    buffers included)."""
    import mmdlib.devices

    sent, to = [], torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        devices = [a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))]
        if devices and torch.device(devices[0]).type == "cuda":
            sent.append(tuple(self.shape))
            args = tuple("cpu" if a is devices[0] else a for a in args)
            kwargs = {k: "cpu" if v is devices[0] else v for k, v in kwargs.items()}
        return to(self, *args, **kwargs)

    monkeypatch.setattr(mmdlib.devices, "pick_device",
                        lambda name="auto": torch.device("cuda" if name == "auto" else name))
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    return sent


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference relative to b's largest magnitude."""
    return float((a - b).abs().max() / b.abs().max())


class TinyFeatures(mmdlib.FeatureExtractor):
    """A fixed random convolution: features that depend on nothing trained, so golden values computed with
    them depend only on the finetuning math."""

    name, dim, channels = "tiny", 16, 1

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 16, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) / 3)
            self.conv.bias.copy_(torch.randn(16, generator=g) / 3)
        self.freeze()

    def features(self, x):
        return self.conv(x).relu().mean((2, 3))


DINOV2_SHAPE = (1024, 24, 16, 37)  # ViT-L/14: width, depth, heads, and 37x37 patches at 518
