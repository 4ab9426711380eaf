"""Denoiser networks (Flax Linen modules, used through their pure ``apply``)."""

from .mlp import MLP, sinusoidal_embedding

__all__ = ["MLP", "sinusoidal_embedding"]
