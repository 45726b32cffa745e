"""The UNet class converted improved-diffusion checkpoints load as (``mmdlib.convert``).

diffusers' ``UNet2DModel`` expresses improved-diffusion's UNet (scale-shift norm, cos-then-sin timestep
features, GroupNorm 32) except for three things: it sets one attention head *width* for every level, while
improved-diffusion fixes the head *count* (4 for ImageNet-64, over levels of 384 and 512 channels); it has
no timestep scale, while improved-diffusion's ``rescale_timesteps`` feeds the network t * 1000 / T; and under
scale-shift norm its middle attention has no GroupNorm, while improved-diffusion's has one.
``ImprovedUNet2DModel`` is ``UNet2DModel`` with the first two as config entries and a GroupNorm before every
attention, saved and loaded like any diffusers model. An exported pipeline names it as ``["mmdlib.unets", "ImprovedUNet2DModel"]``;
``DiffusionPipeline.from_pretrained`` imports this module and finds the class and its base, ``ModelMixin``,
here. Not imported by ``import mmdlib``, which does not import diffusers.
"""
from __future__ import annotations

import inspect

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.models.attention_processor import Attention

__all__ = ["ImprovedUNet2DModel", "ModelMixin", "UNET_CLASSES"]


class ImprovedUNet2DModel(UNet2DModel):
    """``UNet2DModel`` plus ``attention_heads`` (the head count of every attention layer, whatever its width;
    None: UNet2DModel's ``attention_head_dim`` rule) and ``timestep_scale`` (the network sees t *
    timestep_scale: improved-diffusion's ``rescale_timesteps`` is 1000 / T); every attention layer normalises
    its input with a GroupNorm."""

    def __init__(self, *args, attention_heads: int | None = None, timestep_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)  # UNet2DModel's own config entries are registered by its decorator
        self.register_to_config(attention_heads=attention_heads, timestep_scale=timestep_scale)
        c = self.config
        for attn in self.modules():
            if isinstance(attn, Attention):
                if attn.group_norm is None:  # UNet2DModel's middle attention under scale-shift norm
                    attn.group_norm = torch.nn.GroupNorm(c.attn_norm_num_groups or c.norm_num_groups,
                                                         attn.inner_dim, eps=c.norm_eps, affine=True)
                if attention_heads is not None:
                    if attn.inner_dim % attention_heads:
                        raise ValueError(f"{attention_heads} heads do not divide an attention width of "
                                         f"{attn.inner_dim}.")
                    # the processors split the width by `heads` at every call; scale: 1/sqrt(head width)
                    attn.heads = attn.sliceable_head_dim = attention_heads
                    attn.scale = (attn.inner_dim // attention_heads) ** -0.5

    def forward(self, sample: torch.Tensor, timestep, *args, **kwargs):
        scale = self.config.timestep_scale
        if scale != 1.0:
            t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
            timestep = t.float() * scale
        return super().forward(sample, timestep, *args, **kwargs)


# diffusers' ConfigMixin reads the config entries a class takes from its __init__'s signature: UNet2DModel's
# parameters and ours
_params = [p for p in inspect.signature(UNet2DModel.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
ImprovedUNet2DModel.__init__.__signature__ = inspect.Signature(
    _params + [inspect.Parameter("attention_heads", inspect.Parameter.KEYWORD_ONLY, default=None),
               inspect.Parameter("timestep_scale", inspect.Parameter.KEYWORD_ONLY, default=1.0)])

# the UNet classes a model folder's config may name (its "_class_name")
UNET_CLASSES = {"UNet2DModel": UNet2DModel, "ImprovedUNet2DModel": ImprovedUNet2DModel}
