"""Embedding networks: an L2-normalised head on a backbone; dlib's pretrained face descriptor."""

from .dlib_resnet import DlibResNet, affines_to_batchnorm
from .pretrained import load_dlib_resnet
from .vision import ResNetEmbedder

__all__ = ["DlibResNet", "ResNetEmbedder", "affines_to_batchnorm", "load_dlib_resnet"]
