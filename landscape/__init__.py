"""landscape: sharpness-aware training and loss-landscape analysis for PyTorch.

The public API, declared once here (``import landscape as ls``). Heavy modules are imported
lazily, so ``import landscape`` stays fast and plotting never pulls in torch-only pieces it does
not use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it, grouped as in the README.
_API: dict[str, str] = {
    # options
    "TrainConfig": "landscape.config",
    "SAMConfig": "landscape.config",
    "MSAMConfig": "landscape.config",
    "ConfigError": "landscape.config",
    # models, data, parameter groups
    "build_model": "landscape.models",
    "describe": "landscape.models",
    "model_names": "landscape.models",
    "register_model": "landscape.models",
    "ModelBudgetError": "landscape.models",
    "get_dataset": "landscape.data",
    "dataset_names": "landscape.data",
    "ArrayDataset": "landscape.data",
    "register_dataset": "landscape.data",
    # model and data specs (import paths, factories, zoo names)
    "resolve_model": "landscape.specs",
    "resolve_data": "landscape.specs",
    "import_object": "landscape.specs",
    "spec_to_json": "landscape.specs",
    "ModelSpec": "landscape.specs",
    "SpecError": "landscape.specs",
    "select": "landscape.params",
    "GroupError": "landscape.params",
    # training
    "train": "landscape.trainer",
    "TrainingError": "landscape.trainer",
    "SAM": "landscape.optim",
    "MSAM": "landscape.optim",
    "build_optimizer": "landscape.optim",
    "train_step": "landscape.optim",
    "recalibrate_bn": "landscape.optim",
    "Precision": "landscape.precision",
    # checkpoints
    "save_checkpoint": "landscape.checkpoint",
    "load_checkpoint": "landscape.checkpoint",
    "find_checkpoints": "landscape.checkpoint",
    "Checkpoint": "landscape.checkpoint",
    "CheckpointError": "landscape.checkpoint",
    # analyses
    "Objective": "landscape.objective",
    "ObjectiveOptions": "landscape.objective",
    "resolve_loss": "landscape.losses",
    "Loss": "landscape.losses",
    "hessian_spectrum": "landscape.analyses.hessian",
    "HessianOptions": "landscape.analyses.hessian",
    "lanczos": "landscape.analyses.lanczos",
    "sharpness": "landscape.analyses.sharpness",
    "SharpnessOptions": "landscape.analyses.sharpness",
    "apgd": "landscape.analyses.apgd",
    "momentum_curvature": "landscape.analyses.momentum",
    "MomentumOptions": "landscape.analyses.momentum",
    "loss_slice": "landscape.analyses.slices",
    "combine_parts": "landscape.analyses.slices",
    "LossSliceOptions": "landscape.analyses.slices",
    "slice_analysis": "landscape.analyses.slices",
    "SliceOptions": "landscape.analyses.slices",
    "norm_params": "landscape.analyses.norm_params",
    "NormParamsOptions": "landscape.analyses.norm_params",
    "feature_rank": "landscape.analyses.feature_rank",
    "FeatureRankOptions": "landscape.analyses.feature_rank",
    "robustness": "landscape.analyses.robustness",
    "RobustnessOptions": "landscape.analyses.robustness",
    "hutchpp": "landscape.analyses.trace",
    "xtrace": "landscape.analyses.trace",
    "slq": "landscape.analyses.slq",
    "register_analysis": "landscape.analyses.registry",
    "DataOptions": "landscape.analyses.registry",
    "analysis_names": "landscape.analyses.registry",
    # loss-landscape directions (Li et al. 2018)
    "random_direction": "landscape.directions",
    "checkpoint_direction": "landscape.directions",
    "plane": "landscape.directions",
    "momentum_direction": "landscape.directions",
    "gradient_direction": "landscape.directions",
    "eigenvector_directions": "landscape.directions",
    "trajectory_pca": "landscape.directions",
    "orthogonalize": "landscape.directions",
    "Plane": "landscape.directions",
    "DirectionError": "landscape.directions",
    "directions_to_dataset": "landscape.directions",
    "directions_from_dataset": "landscape.directions",
    # results and batch analysis
    "write_result": "landscape.results",
    "read_result": "landscape.results",
    "open_results": "landscape.results",
    "find_results": "landscape.results",
    "analyze": "landscape.batch",
    "Summary": "landscape.batch",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
