"""The model zoo: ``build_model(name, **kwargs)``; one family per module."""

from landscape.models import mlp, resnet1d, resnet_cifar, resnext, vgg, vit, wrn  # noqa: F401  (registration side effects)
from landscape.models.registry import (
    MAX_PARAMETER_TENSORS,
    MAX_PARAMETERS,
    ModelBudgetError,
    build_model,
    build_within_budget,
    describe,
    model_names,
    register,
    register_model,
)

__all__ = [
    "MAX_PARAMETERS",
    "MAX_PARAMETER_TENSORS",
    "ModelBudgetError",
    "build_model",
    "build_within_budget",
    "describe",
    "model_names",
    "register",
    "register_model",
]
