"""Input pipeline throughput (images/s) for CIFAR-shaped data, device-resident vs DataLoader.

Measure with ``pytest tests/benchmarks --benchmark-enable``; in the normal
suite (benchmarks disabled) each case runs once as a smoke test.
"""
from __future__ import annotations

import pytest
import torch

from kdbench.data.small import small_image_bundle
from kdbench.orchestration.config import compose

N_IMAGES = 4096


@pytest.fixture(scope="module")
def cifar_like():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(N_IMAGES) % 100
    return images, labels


@pytest.mark.parametrize("batch_size", [64, 512])
@pytest.mark.parametrize("pipeline,workers", [("device", 0), ("dataloader", 0), ("dataloader", 2)])
def test_input_pipeline_images_per_second(benchmark, cifar_like, pipeline, workers, batch_size):
    images, labels = cifar_like
    cfg = compose(["dataset=cifar100", f"data.pipeline={pipeline}", f"data.source.workers={workers}",
                   "data.val_fraction=0"], check=False).data
    bundle = small_image_bundle(cfg, "bench", images, labels, images[:10], labels[:10],
                                [str(i) for i in range(100)], [0.5] * 3, [0.25] * 3)
    epoch = iter(range(10**6))

    def one_epoch() -> int:
        n = 0
        for batch in bundle.train_batches(batch_size, seed=0, epoch=next(epoch)):
            n += len(batch.labels)
        return n

    n = benchmark.pedantic(one_epoch, rounds=7, iterations=1, warmup_rounds=1)
    assert n == N_IMAGES
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = N_IMAGES / benchmark.stats.stats.mean
