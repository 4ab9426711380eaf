"""Denoiser networks (Flax Linen modules, used through their pure ``apply``): MLP, UNet, and the
BERT-style text denoiser :class:`Transformer` (pretrained BERT weights via ``bert_checkpoint``)."""

from .mlp import MLP, sinusoidal_embedding
from .unet import (PRESETS, AttnBlock, ResBlock, UNet, UNetConfig, count_params, fourier_embedding,
                   init_shapes, unet_cifar10, unet_digits, unet_tiny)
from .transformer import (TIME_MODES, Transformer, TransformerConfig, bind_dropout, init_params,
                          make_apply_fn, make_train_apply_fn, tiny_config)
from . import bert_checkpoint

__all__ = ["MLP", "sinusoidal_embedding", "UNet", "UNetConfig", "ResBlock", "AttnBlock",
           "count_params", "init_shapes", "fourier_embedding", "unet_cifar10", "unet_digits",
           "unet_tiny", "PRESETS", "TIME_MODES", "Transformer", "TransformerConfig",
           "bind_dropout", "init_params", "make_apply_fn", "make_train_apply_fn", "tiny_config",
           "bert_checkpoint"]
