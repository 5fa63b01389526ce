"""A diffusers UNet that works on space-to-depth patches: an image of C x H x W enters as C*p*p x H/p x W/p
(pixel_unshuffle) and its prediction leaves through the inverse fold (pixel_shuffle).

    unet = PatchUNet(patch_size=2, sample_size=64, inner={...UNet2DConditionModel config...})
    eps = unet(x_t, t, encoder_hidden_states=ctx).sample          # x_t: N x 3 x 64 x 64

A 64 px generator then costs what a 32 px one does, with no first-stage autoencoder to train: the UNet's
first level sees 2x2 pixel blocks, as the patch embedding of a diffusion transformer does. The dlib judge
tells 32 px faces apart half as well as 64 px ones (different people accepted as the same: 22 % at 32 px,
11 % at 64 and 112 px; benchmarks/results/generator_recipe.json), so resolution, not the UNet's width,
decides whether a small generator's identities can be distinct. `config.sample_size` and `config.in_channels`
are the image's, so samplers treat it as any UNet.
"""
from __future__ import annotations

from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch.nn import functional as F


class PatchUNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, patch_size: int = 2, sample_size: int = 64, in_channels: int = 3, inner: dict | None = None):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"generator.resolution {sample_size} is not a multiple of generator.patch_size {patch_size}")
        self.unet = UNet2DConditionModel.from_config(dict(inner or {}, sample_size=sample_size // patch_size,
                                                          in_channels=in_channels * patch_size ** 2,
                                                          out_channels=in_channels * patch_size ** 2))

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs) -> UNet2DConditionOutput:
        p = self.config.patch_size
        out = self.unet(F.pixel_unshuffle(sample, p), timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        return UNet2DConditionOutput(sample=F.pixel_shuffle(out, p))
