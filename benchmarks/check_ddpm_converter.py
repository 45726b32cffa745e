"""The ddpm converter against the DDIM code base's own network (ermongroup/ddim, models/diffusion.py).

    git clone https://github.com/ermongroup/ddim /tmp/ddim
    python benchmarks/check_ddpm_converter.py --ddim-repo /tmp/ddim

Builds that code's ``Model`` with the CIFAR-10, CelebA and LSUN-Church configurations at full size, random
weights, converts its state dict with ``mmdlib.convert`` and prints the parameter counts and the largest
relative difference of eps at several timesteps. (The tests check the converter against a functional DDPM
UNet written from the paper; this checks it against the original code, which is not a package.)
"""
from __future__ import annotations

import argparse
import sys
import types

import torch

from mmdlib import convert as cv

CONFIGS = {"cifar10": ((1, 2, 2, 2), 32), "celeba64": ((1, 2, 2, 2, 4), 64), "church": ((1, 1, 2, 2, 4, 4), 256)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ddim-repo", required=True, help="a checkout of github.com/ermongroup/ddim")
    p.add_argument("--models", default="cifar10,celeba64", help="comma-separated: cifar10, celeba64, church")
    a = p.parse_args()
    sys.path.insert(0, a.ddim_repo)
    from models.diffusion import Model  # the DDIM code's network

    ns = types.SimpleNamespace
    for name in a.models.split(","):
        mult, res = CONFIGS[name]
        config = ns(model=ns(ch=128, out_ch=3, ch_mult=mult, num_res_blocks=2, attn_resolutions=[16], dropout=0.1,
                             var_type="fixedlarge", ema_rate=0.9999, ema=True, resamp_with_conv=True, in_channels=3,
                             type="simple"),
                    data=ns(image_size=res, channels=3), diffusion=ns(num_diffusion_timesteps=1000))
        torch.manual_seed(0)
        original = Model(config).eval()
        with torch.no_grad():  # away from any initialisation that zeroes a path
            for w in original.parameters():
                w.add_(0.02 * torch.randn_like(w))
        unet, _ = cv.convert_state(original.state_dict(), "ddpm", size=res)
        x = torch.randn(2, 3, res, res)
        worst = 0.0
        with torch.no_grad():
            for t in (0, 123, 500, 999):
                tt = torch.full((2,), t)
                want = original(x, tt)
                worst = max(worst, float((unet(x, tt).sample - want).abs().max() / want.abs().max()))
        print(f"{name}: parameters {sum(w.numel() for w in original.parameters()):,} (DDIM code) and "
              f"{sum(w.numel() for w in unet.parameters()):,} (converted); largest relative eps difference "
              f"{worst:.2e}")


if __name__ == "__main__":
    main()
