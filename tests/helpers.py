"""Tiny data in the real on-disk formats: CIFAR pickle batches, ImageFolder JPEG trees, archives."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def write_cifar_pickles(root: Path, num_classes: int, per_class: int = 6, test_per_class: int = 2,
                        seed: int = 0) -> None:
    """The official python-version layout (cifar-10-batches-py / cifar-100-python)."""
    rng = np.random.default_rng(seed)

    def batch(n_per):
        labels = [c for c in range(num_classes) for _ in range(n_per)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        return data, labels

    if num_classes == 10:
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        data, labels = batch(per_class)
        chunks = np.array_split(np.arange(len(labels)), 5)
        for i, idx in enumerate(chunks, 1):
            with open(d / f"data_batch_{i}", "wb") as f:
                pickle.dump({"data": data[idx], "labels": [labels[j] for j in idx]}, f)
        data, labels = batch(test_per_class)
        with open(d / "test_batch", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        with open(d / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for name, n_per in (("train", per_class), ("test", test_per_class)):
            data, labels = batch(n_per)
            with open(d / name, "wb") as f:
                pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}, f)
        with open(d / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"class{i}" for i in range(num_classes)]}, f)


def write_image_tree(root: Path, per_class: int = 4, size: int = 32, classes=("cat", "dog"),
                     splits=("train", "test"), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.jpg", quality=75)


def write_cifar10_jpg_archive(path: Path, per_class: int = 3) -> Path:
    """A miniature of the CIFAR-10 JPEG archive: cifar10-jpg/{train,test}/<class>/NNNN.jpg."""
    tree = path.parent / "tree"
    write_image_tree(tree / "cifar10-jpg", per_class=per_class,
                     classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                              "truck"))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree / "cifar10-jpg", arcname="cifar10-jpg")
    return path


def relabel(record: dict, *, dataset: str | None = None, pair: str | None = None, teacher: str | None = None,
            student: str | None = None, epochs: int | None = None, seed: int | None = None,
            num_train: int | None = None, protocol: str | None = None, **method_params) -> dict:
    """A copy of ``record`` as if it came from another experiment: the named fields and its experiment spec
    changed together, the experiment id and run id recomputed (so the validator accepts it)."""
    import copy

    from kdbench.experiment.identity import experiment_id, run_id_from

    r = copy.deepcopy(record)
    spec = r["experiment"]["spec"]
    if dataset is not None:
        r["dataset"]["name"] = spec["data"]["name"] = dataset
    if num_train is not None:
        r["dataset"]["num_train"] = num_train
    for key, value in (("name", pair), ("teacher", teacher), ("student", student)):
        if value is not None:
            r["pair"][key] = spec["pair"][key] = value
    if epochs is not None:
        r["schedule"]["epochs"] = spec["schedule"]["epochs"] = epochs
        _stretch_history(r, epochs)
    if seed is not None:
        r["seed"] = seed
    if protocol is not None:
        spec["protocol"]["name"] = protocol
    spec["method"].update(method_params)
    r["experiment"]["id"] = experiment_id(spec)
    r["run_id"] = run_id_from(spec, r["seed"])
    return r


def _stretch_history(r: dict, epochs: int) -> None:
    """Keep a relabelled record self-consistent (the validator checks it): a history of ``epochs`` rows that
    ends with the original last row (earlier rows repeat the first one), its final and selected metrics
    picked from it by the runner's rules."""
    import copy

    h = r["history"]
    rows = [copy.deepcopy(h[0]) for _ in range(max(0, epochs - len(h)))] + h[-epochs:]
    for i, row in enumerate(rows):
        row["epoch"] = i + 1
    r["history"] = rows
    m = r["metrics"]
    models = [k for k in m["last"] if k != "epoch"]

    def summary(i: int) -> dict:
        return {"epoch": i + 1, **{k: {"val": rows[i][k]["val"], "test": rows[i][k]["test"]} for k in models}}

    m["last"] = summary(len(rows) - 1)
    if m["selected"] is not None:
        p = m["primary_model"]
        m["selected"] = summary(max(range(len(rows)), key=lambda i: (rows[i][p]["val"]["top1"], -i)))


def set_top1(r: dict, value: float, model: str = "student") -> dict:
    """Give a record another final test top-1, consistently: the history's last row says the same (and the
    selected epoch, when it is the last)."""
    last = len(r["history"])
    r["history"][-1][model]["test"]["top1"] = value
    r["metrics"]["last"][model]["test"]["top1"] = value
    sel = r["metrics"]["selected"]
    if sel is not None and sel["epoch"] == last:
        sel[model]["test"]["top1"] = value
    return r


EPS32 = torch.finfo(torch.float32).eps  # 2**-23: float32's relative rounding step


def float32_kl_error(p: torch.Tensor, log_q: torch.Tensor, *scaled_logits) -> float:
    """A bound on how far ``sum(p * (log p - log q))`` computed in float32 (float32 softmaxes of rows of C
    ``scaled_logits``, the logits over the temperature, at most x_max in size) may lie from the same sum in
    float64.

    Each float32 (log-)softmax rounds the scaled logits and their shift by the row's maximum, sums C
    exponentials and takes one log: every log is off by up to about (C + 2) eps (1 + |log| + 2 x_max), every
    probability by (C + 2) eps relatively. A term p (log p - log q) is thus off by p times both logs' errors
    plus (C + 2) eps |term|, and summing the N terms in float32 adds N eps sum |term|. Between two networks at
    initialisation p is close to q: the KL is a small difference of logs of size log C, so its float32
    relative error can reach 1e-3, while this bound stays a few per cent of it at most (a wrong temperature
    factor moves the KL by a factor T or more)."""
    p, log_q = p.detach().double(), log_q.detach().double()
    x_max = max((float(torch.as_tensor(x).detach().abs().max()) for x in scaled_logits), default=0.0)
    c, n = p.shape[-1], p.numel()
    log_p = p.log()
    terms = (p * (log_p - log_q)).abs()
    per_term = (c + 2) * EPS32 * (p * (2 + log_p.abs() + log_q.abs() + 4 * x_max) + terms)
    return float(per_term.sum() + n * EPS32 * terms.sum())


def approx_float32_kl(expected: float, bound: float):
    """``pytest.approx(expected, abs=bound)`` for a KL term computed in float32, ``bound`` from
    :func:`float32_kl_error` times the term's factors; refused where the bound is so wide that a wrong factor
    of the loss (T instead of T**2, a weight, a reduction) could pass."""
    assert bound <= 0.05 * abs(expected), f"the float32 bound {bound:.3g} would hide a wrong factor of {expected:.3g}"
    return pytest.approx(expected, abs=bound)


def small_method(name: str, *overrides: str, cifar: bool = False):
    """Method ``name`` built on freshly seeded small models, as a run would build it from its composed config:
    the digits pair (cnn_wide -> cnn_small, 10 classes, 1x8x8), or with ``cifar`` a resnet20 -> resnet8 of
    CIFAR-100 shapes composed on the resnet56 -> resnet20 pair."""
    from kdbench.data import DatasetInfo
    from kdbench.method import build_method
    from kdbench.models import seeded_model
    from kdbench.orchestration.config import compose

    if cifar:
        cfg = compose([f"method={name}", *overrides, "pair=cifar100/resnet56-resnet20", "dataset=cifar100"])
        info, (s_arch, t_arch), shape = DatasetInfo("x", 100, (3, 32, 32), 16), ("resnet8", "resnet20"), (100, 3)
    else:
        cfg = compose([f"method={name}", *overrides])
        info, (s_arch, t_arch), shape = DatasetInfo("x", 10, (1, 8, 8), 16), ("cnn_small", "cnn_wide"), (10, 1)
    s, t = seeded_model(s_arch, *shape, 0), seeded_model(t_arch, *shape, 0, "teacher-init")
    return build_method(cfg.method, s, info, 0, teacher=t, student_arch=s_arch, teacher_arch=t_arch)


# The zoo's networks whose forward pass at 32x32 costs 2.3 GFLOPs or more (kdbench.models.forward_flops:
# resnet34, resnet50, wrn_16_8, wrn_28_10, resnext29 -- the survey's networks): a test that runs every model
# runs these in the slow tier, so `make test` stays fast as the zoo grows. test_zoo checks the list (slow tier).
LARGE_MODELS = frozenset({"resnet34", "resnet50", "wrn_16_8", "wrn_28_10", "resnext29", "resnet152",
                          "resnext50_4"})
LARGE_GFLOPS = 2.3


def by_cost(names) -> list:
    """``names`` as pytest parameters, the large networks (:data:`LARGE_MODELS`) marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE_MODELS else n for n in names]
