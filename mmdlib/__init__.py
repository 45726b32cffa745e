"""mmdlib: MMD-DDM (Aiello, Valsesia, Magli, IEEE Access 2024) as a small library.

Finetune a pretrained diffusion model for a fixed, small budget of sampling steps by minimising the
unbiased MMD^2 between perceptual features of generated and real images, backpropagating through the
short sampling chain.
"""
from .cache import smoke_test
from .data import DATASETS, digits_dataset, get_dataset
from .errors import MMDLibError
from .features import FEATURES, FeatureExtractor, get_feature_extractor
from .mmd import KERNELS, cubic_kernel, get_kernel, linear_kernel, mmd2_unbiased, rbf_kernel
from .export import save_pipeline
from .models import MODELS, LoadedModel, load_model
from .sampling import (SAMPLERS, ddim_sample, ddpm_sample, dpmpp_2m_sample, generators, get_sampler, noise,
                       predict_eps, randn, sample_seeded, slerp, to_unit, unipc_sample)
from .schedules import TIMESTEP_SPACINGS, alpha_bar, alphas_cumprod, linear_betas, timestep_subset
from .streams import PURPOSES, stream_seeds
from .timesteps import LearnedTimesteps

__version__ = "0.1.0"

__all__ = [
    "DATASETS", "FEATURES", "FeatureExtractor", "KERNELS", "LearnedTimesteps", "LoadedModel", "MMDLibError", "MODELS",
    "PURPOSES", "SAMPLERS", "TIMESTEP_SPACINGS", "alpha_bar", "alphas_cumprod", "cubic_kernel", "ddim_sample", "ddpm_sample",
    "digits_dataset", "dpmpp_2m_sample", "generators", "get_dataset", "get_feature_extractor", "get_kernel",
    "get_sampler", "linear_betas", "linear_kernel", "load_model", "mmd2_unbiased", "noise", "predict_eps", "randn",
    "rbf_kernel", "sample_seeded", "save_pipeline", "slerp", "smoke_test", "stream_seeds", "timestep_subset",
    "to_unit", "unipc_sample",
]
