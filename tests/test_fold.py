"""BatchNorm folding of the frozen teacher: same outputs, fewer layers, refused where unsafe."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kdbench.models import MODELS, ModelOutput, create_model
from kdbench.models.base import KDModel
from kdbench.models.fold import fold_batchnorm
from tests.helpers import by_cost

CIFAR = [e.name for e in MODELS if e.meta.get("family") == "cifar"]


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Trained-looking statistics and affine parameters, so a wrong fold shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        o = model(x)
    return [o.logits, *o.features, o.embedding, *(o.preact_features or [])]


@pytest.mark.numerics
@pytest.mark.parametrize("name", by_cost(CIFAR))
def test_folding_keeps_every_output_of_every_cifar_model(name):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    _randomise_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    before = _outputs(model, x)
    n_bn = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    n = fold_batchnorm(model, (3, 32, 32))
    assert 0 < n <= n_bn
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == n_bn - n
    for a, b in zip(before, _outputs(model, x)):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max().clamp_min(1)))


def test_plain_resnet_folds_every_batchnorm():
    model = create_model("resnet8x4", 10).eval()
    assert fold_batchnorm(model, (3, 32, 32)) == 10  # stem + 3 blocks x (2 convs + shortcut)
    assert not [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class _ConvReadTwice(KDModel):
    """The conv's output is both normalised and returned raw: folding would change the feature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        f = self.conv(x)
        emb = self.bn(f).mean((2, 3))
        return ModelOutput(self.fc(emb), [f], emb)


def test_a_conv_read_elsewhere_is_left_exactly_as_it_was():
    model = _ConvReadTwice().eval()
    _randomise_batchnorm(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fold_batchnorm(model, (1, 6, 6)) == 0
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.bias is not None
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model("resnet8", 10).train(), (3, 32, 32))


@pytest.mark.usefixtures("teacher_cache")
def test_engine_folds_the_teacher_only_and_records_it(make_cfg):
    from kdbench.orchestration.runner import run

    rec = run(make_cfg("method=kd", epochs=1))
    assert rec["engine"]["fold_teacher_bn"] is True
    off = run(make_cfg("method=kd", "engine.fold_teacher_bn=false", "force=true", epochs=1))
    assert off["engine"]["fold_teacher_bn"] is False
    assert off["run_id"] == rec["run_id"]  # a fast-path switch, not a different experiment
    a, b = (r["metrics"]["last"]["student"]["test"]["top1"] for r in (rec, off))
    assert abs(a - b) < 3  # rounding differences only


def test_bad_fold_setting_is_a_clear_error(make_cfg):
    from kdbench.core.errors import KDBenchError
    from kdbench.training.fastpath import resolve_fast_path

    with pytest.raises(KDBenchError, match="fold_teacher_bn"):
        resolve_fast_path(make_cfg("engine.fold_teacher_bn=maybe").engine, torch.device("cpu"))


class _ReadsBatchNormDirectly(KDModel):
    """Forward code that reaches into a BatchNorm module: folding breaks it, so it is undone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        f = self.bn(self.conv(x)) + self.bn.bias[:, None, None]
        emb = f.mean((2, 3))
        return ModelOutput(self.fc(emb), [f], emb)


def test_a_fold_that_breaks_the_forward_pass_is_undone():
    model = _ReadsBatchNormDirectly().eval()
    _randomise_batchnorm(model)
    x = torch.randn(2, 1, 6, 6)
    before = _outputs(model, x)
    assert fold_batchnorm(model, (1, 6, 6)) == 0
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.bias is not None
    for a, b in zip(before, _outputs(model, x)):
        assert torch.equal(a, b)


@pytest.mark.numerics
def test_a_low_precision_teacher_is_folded_and_keeps_its_outputs():
    """The check runs on a float64 copy: device rounding (bf16 weights here, TF32 convolutions on CUDA)
    must not veto a correct fold (on an H200 every fold was refused and the teacher ran 1.6x slower)."""
    torch.manual_seed(0)
    model = create_model("resnet8x4", 10).eval()
    _randomise_batchnorm(model)
    model = model.to(torch.bfloat16)
    x = torch.randn(3, 3, 32, 32, dtype=torch.bfloat16)
    before = _outputs(model, x)
    assert fold_batchnorm(model, (3, 32, 32)) == 10
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for a, b in zip(before, _outputs(model, x)):
        scale = float(a.float().abs().max().clamp_min(1))
        torch.testing.assert_close(b.float(), a.float(), rtol=0.1, atol=0.05 * scale)
