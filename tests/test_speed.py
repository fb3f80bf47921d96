"""The speed harness: a full step is measured beside the reference loop; FLOPs add up."""
from __future__ import annotations

import pytest

from kdbench.models import create_model, forward_flops
from kdbench.orchestration.config import compose
from kdbench.orchestration.speed import format_speed, measure_method, peak_tflops
from kdbench.training.fastpath import resolve_fast_path


def _cfg(*extra):
    # a small CIFAR pair keeps this quick; the harness's default is resnet32x4 -> resnet8x4
    return compose(["pair=cifar100/resnet56-resnet20", "pair.teacher=resnet8", "pair.student=resnet8", *extra])


@pytest.mark.parametrize("method", ["vanilla", "kd", "crd"])
def test_speed_record_has_every_number(method):
    r = measure_method(_cfg(), method, batch_size=8, steps=2, warmup=1)
    assert r["engine"]["images_per_s"] > 0 and r["reference"]["images_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["engine"]["images_per_s"] / r["reference"]["images_per_s"])
    assert r["achieved_tflops"] > 0 and r["mfu"] is None  # no known peak for a CPU
    assert r["engine"]["peak_memory_bytes"] > 0
    line = next(ln for ln in format_speed([r]).splitlines() if ln.split()[:1] == [method])
    cells = line.split()
    assert float(cells[1]) == pytest.approx(r["reference"]["images_per_s"], abs=0.06)
    assert float(cells[2]) == pytest.approx(r["engine"]["images_per_s"], abs=0.06)
    assert cells[3] == f"{r['speedup']:.2f}x"


def test_step_flops_are_forward_plus_backward():
    fwd = forward_flops(create_model("resnet8", 100), (3, 32, 32))
    van = measure_method(_cfg(), "vanilla", batch_size=8, steps=1, warmup=0, reference=False)
    kd = measure_method(_cfg(), "kd", batch_size=8, steps=1, warmup=0, reference=False)
    # backward costs about twice the forward: a training step is ~3x forward
    assert van["flops_per_image"] == pytest.approx(3 * fwd, rel=0.1)
    assert kd["flops_per_image"] - van["flops_per_image"] == pytest.approx(fwd, rel=0.1)  # + teacher forward


def test_fast_path_defaults():
    import torch

    cpu = resolve_fast_path(compose().engine, torch.device("cpu"))
    assert (cpu.amp, cpu.channels_last, cpu.optimizer_impl, cpu.compile, cpu.fold_teacher_bn) == (
        "fp32", True, "foreach", "off", True)
    gpu = resolve_fast_path(compose().engine, torch.device("cuda"))
    assert (gpu.amp, gpu.optimizer_impl) == ("bf16", "fused")
    assert peak_tflops(torch.device("cpu"), "bf16") is None


def test_alternating_rounds_give_medians_and_the_ratio_range():
    import statistics

    from kdbench.core.errors import KDBenchError
    from kdbench.experiment.records import speedup_range

    r = measure_method(_cfg(), "kd", batch_size=8, steps=1, warmup=1, repeats=3)
    assert r["repeats"] == 3 and len(r["rounds"]) == 3
    ratios = [x["images_per_s"] / x["reference_images_per_s"] for x in r["rounds"]]
    assert r["speedup"] == pytest.approx(statistics.median(ratios))
    assert r["engine"]["images_per_s"] == pytest.approx(statistics.median(x["images_per_s"] for x in r["rounds"]))
    lo, hi = (float(v) for v in speedup_range(r).rstrip("x").split("-"))
    assert lo == pytest.approx(min(ratios), abs=0.006) and hi == pytest.approx(max(ratios), abs=0.006)
    assert "alternating rounds" in format_speed([r])
    with pytest.raises(KDBenchError, match="repeats"):
        measure_method(_cfg(), "kd", batch_size=8, steps=1, warmup=1, repeats=0)


def test_cohort_speed_mode_runs_the_shared_teacher_once_per_batch(monkeypatch):
    import kdbench.training.frozen_teacher as ft
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.speed import measure_cohort

    calls = []
    real = ft.FrozenTeacher._compute
    monkeypatch.setattr(ft.FrozenTeacher, "_compute", lambda self, x: calls.append(1) or real(self, x))
    cfg = compose(["pair=cifar100/resnet56-resnet20", "pair.teacher=resnet8", "pair.student=resnet8"])
    r = measure_cohort(cfg, ["kd", "at", "vanilla"], batch_size=4, steps=2, warmup=1)
    assert r["mode"] == "cohort" and r["method"] == "cohort-kd+at+vanilla" and r["speedup"] > 0
    assert r["reference"]["images_per_s"] > 0 and r["engine"]["images_per_s"] > 0
    # solo: each of the two teacher methods runs the teacher on all 3 batches; cohort: once per batch
    # (the FLOP count afterwards runs it once more per teacher method)
    assert len(calls) == 2 * 3 + 3 + 2
    from kdbench.experiment.schema import validate_speed_record

    assert validate_speed_record(r) == []
