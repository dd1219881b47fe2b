"""The model zoo: ``build_model(name, **kwargs)``; one family per module."""

from landscape.models import mlp, resnet1d, resnet_cifar, resnext, vgg, vit, wrn  # noqa: F401  (registration side effects)
from landscape.models.registry import build_model, describe, model_names, register

__all__ = ["build_model", "describe", "model_names", "register"]
