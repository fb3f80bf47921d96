"""Model zoo: every model returns :class:`ModelOutput` and exposes a :class:`FeatureSpec`."""
from .base import FeatureSpec, KDModel, ModelOutput, StageSpec, count_parameters, forward_flops
from .registry import MODELS, check_model_name, create_model, register_model, seeded_model

__all__ = ["FeatureSpec", "KDModel", "ModelOutput", "StageSpec", "count_parameters", "forward_flops",
           "MODELS", "check_model_name", "create_model", "register_model", "seeded_model"]
