"""Small fixtures shared by the tests."""
import torch
from diffusers import UNet2DModel


def make_tiny_unet(channels: int = 3, size: int = 8, seed: int = 0) -> UNet2DModel:
    """A tiny random UNet2DModel with the DDPM CIFAR-10 block layout (resnet + attention blocks)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()
