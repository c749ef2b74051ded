"""Embedding networks: an L2-normalised head on a backbone."""

from .vision import ResNetEmbedder

__all__ = ["ResNetEmbedder"]
