"""mmdlib: MMD-DDM (Aiello, Valsesia, Magli, IEEE Access 2024) as a small library.

Finetune a pretrained diffusion model for a fixed, small budget of sampling steps by minimising the
unbiased MMD^2 between perceptual features of generated and real images, backpropagating through the
short sampling chain.
"""
from .errors import MMDLibError
from .mmd import KERNELS, cubic_kernel, get_kernel, linear_kernel, mmd2_unbiased, rbf_kernel
from .sampling import ddim_sample, ddpm_sample, generators, noise, predict_eps, randn, slerp
from .schedules import SUBSETS, alphas_cumprod, linear_betas, timestep_subset

__version__ = "0.1.0"

__all__ = [
    "KERNELS", "MMDLibError", "SUBSETS", "alphas_cumprod", "cubic_kernel", "ddim_sample", "ddpm_sample",
    "generators", "get_kernel", "linear_betas", "linear_kernel", "mmd2_unbiased", "noise", "predict_eps",
    "randn", "rbf_kernel", "slerp", "timestep_subset",
]
