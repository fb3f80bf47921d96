"""The model interface: one output structure and static feature metadata."""
from __future__ import annotations

import pytest
import torch

from kdbench.models import MODELS, ModelOutput, count_parameters, create_model


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).meta.get("family") == "digits"])
def test_digits_models_expose_features_and_embedding(name):
    m = create_model(name, num_classes=10, in_channels=1)
    out = m(torch.randn(5, 1, 8, 8))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (5, 10)
    assert [f.shape[-1] for f in out.features] == [8, 4, 2]
    assert out.embedding.shape == (5, out.features[-1].shape[1])
    assert len(out.preact_features) == len(out.features)
    # pre-activation features can be negative; post-ReLU ones cannot
    assert (out.preact_features[-1] < 0).any() and (out.features[-1] >= 0).all()
    spec = m.feature_spec((1, 8, 8))
    assert [(s.channels, s.height) for s in spec.stages] == [(f.shape[1], f.shape[2]) for f in out.features]
    assert spec.embedding_dim == out.embedding.shape[1] and spec.num_classes == 10 and spec.has_preact


def test_feature_spec_does_not_touch_batchnorm_statistics():
    m = create_model("cnn_small", num_classes=10, in_channels=1).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.feature_spec((1, 8, 8))
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_teacher_is_larger_than_student():
    assert count_parameters(create_model("cnn_wide", 10, 1)) > 20 * count_parameters(create_model("cnn_small", 10, 1))
