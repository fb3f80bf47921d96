"""Training-step throughput per method on a small CIFAR pair (resnet8 -> resnet8, batch 32).

Measure with ``pytest tests/benchmarks --benchmark-enable``; the full harness with
FLOPs, MFU and the reference loop is ``kdbench speed``.
"""
from __future__ import annotations

import pytest

from kdbench.method import METHODS
from kdbench.orchestration.config import compose
from kdbench.orchestration.speed import _build
from kdbench.training.fastpath import apply_fast_path, build_optimizer, resolve_fast_path, train_one_step


@pytest.mark.parametrize("method", METHODS.names())
def test_train_step_speed(benchmark, method):
    import torch

    cfg = compose(["pair=cifar100/resnet56-resnet20", "pair.teacher=resnet8", "pair.student=resnet8"])
    device = torch.device("cpu")
    data, m = _build(cfg, method, device, 32 * 4, "device")
    fast = resolve_fast_path(cfg.engine, device)
    apply_fast_path(m, fast)
    opt = build_optimizer(m.trainable_parameters(), cfg.schedule, fast.optimizer_impl)
    batch = next(data.train_batches(32, 0, 0, paired=m.paired_batches))
    m.train()
    out = benchmark.pedantic(lambda: train_one_step(m, batch, 0, opt, fast.autocast(device), fast.channels_last),
                             rounds=5, iterations=1, warmup_rounds=1)
    assert all(torch.isfinite(v) for v in out.losses.values())
