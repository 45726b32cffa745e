"""Small fixtures shared by the tests (and the speed benchmark, which needs random Inception weights offline)."""
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from diffusers import UNet2DModel


def make_tiny_unet(channels: int = 3, size: int = 8, seed: int = 0) -> UNet2DModel:
    """A tiny random UNet2DModel with the DDPM CIFAR-10 block layout (resnet + attention blocks)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A weights file in torch-fidelity's Inception key layout with random (He-initialised) weights: for
    offline tests and speed benchmarks, where only the architecture matters."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return Path(path)


def fake_cuda(monkeypatch) -> list[tuple[int, ...]]:
    """A mocked CUDA runtime on the CPU: mmdlib's device selection picks "cuda" for "auto", and a tensor or
    module sent to "cuda" stays on the CPU. Returns the shapes of the tensors sent there (parameters and
    buffers included)."""
    import mmdlib.finetune

    sent, to = [], torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        devices = [a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))]
        if devices and torch.device(devices[0]).type == "cuda":
            sent.append(tuple(self.shape))
            args = tuple("cpu" if a is devices[0] else a for a in args)
            kwargs = {k: "cpu" if v is devices[0] else v for k, v in kwargs.items()}
        return to(self, *args, **kwargs)

    monkeypatch.setattr(mmdlib.finetune, "pick_device",
                        lambda name="auto": torch.device("cuda" if name == "auto" else name))
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    return sent
