"""What a run is measured by: predictions, top-1/top-5, loss, calibration, agreement with the teacher, peak
memory, and the epoch a record reports (last and validation-selected)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import DataBundle
from kdbench.training.method import Method


@torch.no_grad()
def predict(model: nn.Module, data: DataBundle, split: str, batch_size: int,
            autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool) -> tuple[Tensor, Tensor]:
    """(logits, labels) of ``model`` over ``split``, in order, on the data's device."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in data.eval_batches(split, batch_size):
        x = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        with autocast():
            logits.append(model(x).logits.float())
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE with equal-width confidence bins (Guo et al. 2017), as a fraction in [0, 1]."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin b holds conf in (e_b, e_{b+1}]
    acc = torch.zeros(bins, device=probs.device).index_add_(0, which, correct)
    cf = torch.zeros(bins, device=probs.device).index_add_(0, which, conf)
    return ((acc - cf).abs().sum() / max(len(labels), 1)) if len(labels) else torch.zeros(())


def classification_metrics(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None,
                           extended: bool = False) -> dict[str, float | None]:
    """Top-1/top-5 (%), mean CE; with ``extended``: ECE (%, 15 bins), and against a teacher:
    top-1 agreement (%) and KL(teacher || student) in nats per sample."""
    n = max(len(labels), 1)
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    values = [hit[:, 0].float().sum() * 100 / n, hit.any(1).float().sum() * 100 / n,
              F.cross_entropy(logits, labels, reduction="sum") / n]
    names = ["top1", "top5", "loss"]
    if extended:
        log_p = F.log_softmax(logits, 1)
        values.append(expected_calibration_error(log_p.exp(), labels) * 100)
        names.append("ece")
        if teacher_logits is not None:
            log_q = F.log_softmax(teacher_logits, 1)
            values.append((logits.argmax(1) == teacher_logits.argmax(1)).float().sum() * 100 / n)
            values.append(F.kl_div(log_p, log_q, reduction="sum", log_target=True) / n)
            names += ["teacher_agreement", "kl_teacher_student"]
    out: dict[str, float | None] = dict(zip(names, torch.stack(values).tolist()))  # one host sync
    if extended and teacher_logits is None:
        out.update(teacher_agreement=None, kl_teacher_student=None)
    return out


def evaluate(model: nn.Module, data: DataBundle, split: str, batch_size: int,
             autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool,
             teacher_logits: Tensor | None = None, extended: bool = False) -> dict[str, float | None]:
    """Metrics of ``model`` on ``split`` (see :func:`classification_metrics`)."""
    logits, labels = predict(model, data, split, batch_size, autocast, channels_last)
    return classification_metrics(logits, labels, teacher_logits, extended)


def measure_peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of training: CUDA allocator peak on GPU; the process's max RSS on CPU."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_allocated"}
    import resource

    return {"bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "kind": "cpu_max_rss_process"}


def epoch_summary(history: list[dict[str, Any]], i: int, method: Method) -> dict[str, Any]:
    row = history[i]
    return {"epoch": row["epoch"], **{name: {"val": row[name]["val"], "test": row[name]["test"]}
                                      for name in method.eval_models()}}


def select_epoch(history: list[dict[str, Any]], method: Method) -> dict[str, Any] | None:
    """The epoch with the best validation top-1 of the primary model (earliest on ties)."""
    primary = next(iter(method.eval_models()))
    if not history or history[0][primary]["val"] is None:
        return None
    best = max(range(len(history)), key=lambda i: (history[i][primary]["val"]["top1"], -i))
    return epoch_summary(history, best, method)
