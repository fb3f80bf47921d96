"""scikit-learn's bundled digits: 1,797 real 8x8 grey images, 10 classes.

No official split exists, so a stratified test split (``data.test_fraction``)
and a validation split (``data.val_fraction`` of the rest) are carved with a
fixed ``data.split_seed``. Pixels (0..16) are standardised with the training
split's mean and std.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from .base import DatasetInfo, Split, TensorBundle, carve_validation
from .registry import register_dataset


@register_dataset("digits", num_classes=10, channels=1, image_size=8,
                  train_per_class=(178, 182, 177, 183, 181, 182, 181, 179, 174, 180),  # all 1,797 images
                  description="scikit-learn digits: 1,797 real 8x8 grey images, 10 classes (bundled)")
def build_digits(cfg: DictConfig) -> TensorBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    # Test split first, then validation from what remains: the test set never
    # influences training or model selection.
    rest, test = carve_validation(images, labels, float(cfg.test_fraction), int(cfg.split_seed),
                                  what="data.test_fraction")
    train, val = carve_validation(rest.images, rest.labels, float(cfg.val_fraction), int(cfg.split_seed) + 1)
    mean, std = train.images.mean(), train.images.std()
    norm = lambda s: Split((s.images - mean) / std, s.labels, s.indices)  # noqa: E731
    info = DatasetInfo(name="digits", num_classes=10, input_shape=(1, 8, 8), num_train=len(train),
                       classes=tuple(str(i) for i in range(10)))
    return TensorBundle(info, norm(train), norm(val), norm(test))
