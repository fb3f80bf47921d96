"""ImageNet models from timm, behind the kdbench feature interface.

Features come from timm's own ``forward_intermediates`` (stem output, then
each stage, matching the CIFAR zoo's indexing); the embedding is timm's
``forward_head(pre_logits=True)``; logits are its classifier applied to that.
Any timm architecture is available as ``timm/<name>`` (random initialisation:
nothing is downloaded at run time).
"""
from __future__ import annotations

from torch import Tensor

from kdbench.core.errors import KDBenchError

from .base import KDModel, ModelOutput
from .registry import register_model, register_prefix


class TimmModel(KDModel):
    def __init__(self, arch: str, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        import timm

        if arch not in timm.list_models():
            raise KDBenchError(f"timm has no model {arch!r} (see timm.list_models())")
        self.arch = arch
        self.num_classes = num_classes
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        if not hasattr(self.net, "forward_intermediates"):
            raise KDBenchError(f"timm model {arch!r} has no forward_intermediates(): its features cannot be read")

    def forward(self, x: Tensor) -> ModelOutput:
        final, feats = self.net.forward_intermediates(x)
        emb = self.net.forward_head(final, pre_logits=True)
        return ModelOutput(self.net.get_classifier()(emb), list(feats), emb, None)


_IMAGENET = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
             "mobilenetv1": "mobilenetv1_100"}
for _ours, _timm in _IMAGENET.items():
    register_model(f"imagenet/{_ours}", family="imagenet", description=f"ImageNet {_ours} (timm {_timm})")(
        (lambda a: lambda num_classes=1000, in_channels=3: TimmModel(a, num_classes, in_channels))(_timm))


register_prefix("timm/", TimmModel)
