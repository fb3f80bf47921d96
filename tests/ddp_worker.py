"""Run by tests/test_distributed.py under torchrun: CRD and DML steps with 2 processes (gloo)."""
from __future__ import annotations

import contextlib
import copy
import json
import sys

import torch

from kdbench.compute import distributed as ddp
from kdbench.data import build_dataset
from kdbench.method import build_method
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose
from kdbench.training.fastpath import build_optimizer


def main(out: str) -> None:
    ddp.init_from_env()
    cfg = compose(["method=crd"])
    data = build_dataset(cfg.data)
    student = seeded_model("cnn_small", 10, 1, 0)
    teacher = seeded_model("cnn_wide", 10, 1, 0, "teacher-init").eval()
    m = build_method(cfg.method, student, data.info, 0, teacher=teacher, student_arch="cnn_small",
                     teacher_arch="cnn_wide", train_labels=data.train_labels())
    opt = ddp.GradSync(build_optimizer(m.trainable_parameters(), cfg.schedule, "foreach"))
    # the same anchors on both processes: each process must draw its own negatives
    probe = copy.deepcopy(m.sampler)
    drawn = ddp.all_gather_cat(probe(torch.arange(8), data.train_labels()[:8])[None].float())
    m.train()
    for step, batch in enumerate(data.train_batches(32, 0, 0)):
        m.train_step(batch, 0, opt, contextlib.nullcontext)
        if step == 5:
            break
    sums = torch.stack([m.memory.memory_s.sum(), m.memory.memory_t.sum(), m.memory.z.sum(),
                        sum(p.sum() for p in m.student.parameters())])
    gathered = ddp.all_gather_cat(sums[None])
    if ddp.is_main():
        json.dump({"per_rank": gathered.tolist(), "same_negatives": torch.equal(drawn[0], drawn[1])},
                  open(out, "w"))
    ddp.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
    ddp.exit_process(0)
