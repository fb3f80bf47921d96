"""The CIFAR model zoo of the CRD benchmark (Tian et al., ICLR 2020), and the networks the survey's CIFAR rows
(Gou et al. 2021, Tables 5-6) add to it: resnet26, resnet20x0.5, wrn_16_8, wrn_28_10, mobilenet (v1), resnext29.

Parameter names and shapes follow the benchmark's released code
(RepDistiller), so the community's CIFAR-100 teacher checkpoints load with
``strict=True``. Features follow its indexing too: ``features[0]`` is the stem
output and ``features[1:]`` the stages; ``embedding`` is the pooled vector
before the classifier. ``preact_features`` are the stage outputs before their
final ReLU, as the benchmark's ``preact=True`` returns them.

Where the benchmark code has a side effect we do not copy it: its WRN applies
the next BatchNorm module to build pre-activation features, which updates
that layer's running statistics a second time per step; we compute the same
values with batch statistics through ``F.batch_norm`` without touching them.
"""
from . import (  # noqa: F401  (each family registers its models)
    mobilenet,
    mobilenetv2,
    resnet,
    resnet_cifar_stem,
    resnext,
    shufflenet,
    vgg,
    wrn,
)
