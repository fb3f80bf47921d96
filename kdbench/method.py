"""The plug-in surface for methods: everything a method module imports, in one place.

Built-in methods (``methods/``) and plug-in packages import from here, so the training package can be
rearranged without breaking them. See docs/adding-a-method.md.
"""
from kdbench.experiment.catalog import METHODS, Count, Index, Modifier, Positive, Range, Weight, method_defaults
from kdbench.experiment.schema import CATEGORIES, SCHEMES
from kdbench.training.dot import DotDelta, OptimizerChoice
from kdbench.training.losses import kl_divergence, soft_kl, standardize
from kdbench.training.method import (
    MAIN_STAGE,
    InitStage,
    Method,
    MethodContext,
    PartsView,
    StepOutput,
    build_method,
    create_method,
    full_precision,
    match_sizes,
    method_hparams,
    register_method,
    register_method_configs,
    require,
)
from kdbench.training.temperature import CurriculumTemperature, TemperatureSchedule

__all__ = ["CATEGORIES", "MAIN_STAGE", "METHODS", "SCHEMES", "Count", "CurriculumTemperature", "DotDelta", "Index",
           "InitStage", "Method", "MethodContext", "Modifier", "OptimizerChoice", "PartsView", "Positive", "Range",
           "StepOutput", "Weight",
           "build_method", "create_method", "full_precision", "kl_divergence", "match_sizes", "method_defaults",
           "method_hparams", "register_method", "register_method_configs", "require", "soft_kl", "standardize",
           "TemperatureSchedule"]
