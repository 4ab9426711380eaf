"""Denoiser networks (Flax Linen modules, used through their pure ``apply``)."""

from .mlp import MLP, sinusoidal_embedding
from .unet import (PRESETS, AttnBlock, ResBlock, UNet, UNetConfig, count_params, fourier_embedding,
                   init_shapes, unet_cifar10, unet_digits, unet_tiny)

__all__ = ["MLP", "sinusoidal_embedding", "UNet", "UNetConfig", "ResBlock", "AttnBlock",
           "count_params", "init_shapes", "fourier_embedding", "unet_cifar10", "unet_digits",
           "unet_tiny", "PRESETS"]
