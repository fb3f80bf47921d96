"""Contract tests for every registered method, and loss-level tests on hand-made tensors.

A method author gets the contract tests by registering: one step on every
CIFAR pair at a tiny batch (connectors built from the pair's metadata, finite
loss, gradients reach every trainable parameter, the teacher does not change,
state-dict round trip, identical results under a fixed seed).
"""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdbench import KDBenchError
from kdbench.data import Batch, DatasetInfo
from kdbench.method import METHODS, MethodContext, build_method, create_method, method_defaults
from kdbench.models import create_model
from kdbench.orchestration.config import compose

# the CRD benchmark's 13 CIFAR-100 pairs (other cifar100/ pairs serve the survey's rows: kdbench/conf/suite/)
CIFAR_PAIRS = list(compose(["suite=crd-cifar100"], check=False).suite.pairs)
# `make test` runs the contract on three pairs that between them hold every kind of difference a method must
# bridge: one family with equal channels (resnet32x4 -> resnet8x4), two families whose channels and feature-map
# sizes differ (vgg13 -> mobilenetv2: FSP's refusal), and a wide ResNet to a grouped-conv network whose stages
# have no common shape (wrn_40_2 -> shufflenetv1). The other pairs run in the slow tier (`make slow`; CI runs
# both), so the fast tier's cost grows with the methods, not with methods x pairs.
FAST_PAIRS = ("cifar100/resnet32x4-resnet8x4", "cifar100/vgg13-mobilenetv2", "cifar100/wrn_40_2-shufflenetv1")
assert set(FAST_PAIRS) <= set(CIFAR_PAIRS), FAST_PAIRS
CONTRACT_PAIRS = [n if n in FAST_PAIRS else pytest.param(n, marks=pytest.mark.slow) for n in CIFAR_PAIRS]


def _same_channels(pair: str) -> bool:
    cfg = _pair_cfg(pair)
    spec = [_model(a, 100).feature_spec((3, 32, 32)).stages for a in (cfg.pair.student, cfg.pair.teacher)]
    return [s.channels for s in spec[0]] == [s.channels for s in spec[1]]


# methods that serve only some pairs: (which pairs they serve, what their refusal says)
REFUSALS = {"fsp": (_same_channels, "same channel counts"), "kdsvd": (_same_channels, "same channel counts")}
METHOD_NAMES = [n for n in METHODS.names()]
_MODELS: dict[str, torch.nn.Module] = {}


def _model(arch: str, num_classes: int) -> torch.nn.Module:
    key = f"{arch}/{num_classes}"
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = create_model(arch, num_classes=num_classes)
    return copy.deepcopy(_MODELS[key])


@functools.lru_cache(maxsize=None)
def _pair_cfg(pair: str):
    return compose([f"pair={pair}"])


def _compose(method: str, pair: str):
    """The method's config on the pair: its class defaults under the pair's overrides for it. (Composing
    each of ~250 combinations costs ~0.45 s apiece; test_config checks this equals what compose gives.)"""
    cfg = _pair_cfg(pair)
    own = (cfg.pair.get("method_overrides") or {}).get(method) or {}
    return OmegaConf.create({"pair": cfg.pair, "method": {**method_defaults(method), **own}})


def _build(method: str, pair: str, n_train: int = 48, classes: int = 100, seed: int = 0, teacher=None):
    cfg = _compose(method, pair)
    info = DatasetInfo("tiny", classes, (3, 32, 32), n_train)
    student = _model(cfg.pair.student, classes)
    cls = METHODS.get(method).obj
    if cls.uses_teacher and teacher is None:  # TF-KD self distils from a copy of the student's architecture
        arch = {"student": cfg.pair.student, "assistant": (cfg.method.get("assistants") or [None])[-1]}.get(
            cls.teacher_arch, cfg.pair.teacher)  # TAKD distils from its pair's assistant
        teacher = _model(arch, classes).eval()
    labels = torch.arange(n_train) % classes
    m = build_method(cfg.method, student, info, seed, teacher=teacher, student_arch=str(cfg.pair.student),
                     teacher_arch=str(cfg.pair.teacher), train_labels=labels)
    return m, labels


def _same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _batch(labels: torch.Tensor, b: int = 6, paired: bool = False) -> Batch:
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(labels), generator=g)[:b]
    batch = Batch(torch.randn(b, 3, 32, 32, generator=g), labels[idx], idx)
    if paired:  # partners of the same class (CS-KD); any same-class sample will do for the contract
        batch.pair_images, batch.pair_indices = torch.randn(b, 3, 32, 32, generator=g), idx
    return batch


@pytest.mark.parametrize("pair", CONTRACT_PAIRS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_contract_one_step_on_every_cifar_pair(method, pair):
    try:
        m, labels = _build(method, pair)
    except KDBenchError as exc:  # a declared refusal, before training, for exactly the pairs it cannot serve
        assert method in REFUSALS, f"{method} refused {pair}: {exc}"
        serves, why = REFUSALS[method]
        assert not serves(pair) and why in str(exc), (pair, str(exc))
        return
    assert method not in REFUSALS or REFUSALS[method][0](pair), f"{method} should refuse {pair}"
    fresh, _ = _build(method, pair, seed=1, teacher=m.teacher)  # the checkpoint round trip's target
    teacher_before = copy.deepcopy(m.teacher.state_dict()) if m.teacher is not None else None
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.01, momentum=0.9)
    batch = _batch(labels, paired=m.paired_batches)
    m.train()
    out = m.step(batch, epoch=0)
    loss = sum(out.losses.values())
    assert torch.isfinite(loss), out.losses
    assert out.logits.shape == (len(batch.labels), 100)
    m.eval()
    with torch.no_grad():  # every evaluated model (cohort members, heads, branches, ensembles) classifies
        for name, model in m.eval_models().items():
            assert model(batch.images).logits.shape == (len(batch.labels), 100), name
    m.train()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    main = {id(p) for p in m.trainable_parameters()}  # what the schedule's optimizer trains
    missing = [n for n, p in m.named_parameters() if id(p) in main and p.grad is None]
    assert all(not n.startswith("teacher.") for n, p in m.named_parameters() if id(p) in main)
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in m.trainable_parameters())
    opt.step()
    if teacher_before is not None:
        after = m.teacher.state_dict()
        assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before), "the teacher changed"
        assert not any(p.requires_grad for p in m.teacher.parameters())
    # each initialisation stage: a finite loss whose gradient reaches every helper it trains
    for stage in m.init_stages():
        m.stage = stage.name
        out = m.step(batch, epoch=0)
        loss = sum(out.losses.values())
        assert torch.isfinite(loss), (stage.name, out.losses)
        m.zero_grad(set_to_none=True)
        loss.backward()
        for mod in stage.modules:
            got = [p.grad is not None for p in mod.parameters() if p.requires_grad]
            assert (any(got) if mod is m.student else all(got)), f"stage {stage.name}: no gradient in {type(mod)}"
        m.stage = "main"
    # state-dict round trip into a freshly built method
    fresh.load_checkpoint_state(m.checkpoint_state())
    loaded = fresh.checkpoint_state()
    for k, v in m.checkpoint_state().items():
        assert _same(v, loaded[k]), k


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_contract_same_seed_same_result(method):
    pair = "cifar100/resnet32x4-resnet8x4"
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        m, labels = _build(method, pair)
        opt = torch.optim.SGD(m.trainable_parameters(), lr=0.05, momentum=0.9)
        batch = _batch(labels, paired=m.paired_batches)
        out = m.train_step(batch, 0, opt, lambda: torch.autocast("cpu", enabled=False))
        results.append(({k: v.item() for k, v in out.losses.items()},
                        m.checkpoint_state()))
    assert results[0][0] == results[1][0]
    assert all(_same(results[0][1][k], results[1][1][k]) for k in results[0][1])


def test_extra_trainable_parameters_are_the_helpers():
    fit, _ = _build("fitnet", "cifar100/resnet32x4-resnet8x4")
    reg = sum(p.numel() for p in fit.regressor.parameters())
    assert fit.extra_trainable_parameters() == reg > 0
    kd, _ = _build("kd", "cifar100/resnet32x4-resnet8x4")
    assert kd.extra_trainable_parameters() == 0
    crd, _ = _build("crd", "cifar100/resnet32x4-resnet8x4")
    assert crd.extra_trainable_parameters() == (256 * 128 + 128) * 2


# -- loss-level tests on hand-made tensors -------------------------------------------

@pytest.mark.numerics
def test_fitnet_hint_loss_is_zero_when_regressed_student_equals_teacher():
    from kdbench.methods.fitnet import hint_loss

    t = torch.randn(2, 8, 4, 4, dtype=torch.float64)  # (t + 1) - t is 1 up to one rounding of t + 1: eps64-sized
    assert hint_loss(t.clone(), t).item() == 0.0
    assert hint_loss(t + 1, t).item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.numerics
def test_at_is_invariant_to_channel_permutation_and_matches_definition():
    from kdbench.methods.at import at_loss, attention_map

    # float64: a permutation only reorders 8-term channel sums, a few eps64 (2.2e-16) apart
    f_s, f_t = torch.randn(3, 8, 4, 4, dtype=torch.float64), torch.randn(3, 16, 4, 4, dtype=torch.float64)
    perm = torch.randperm(8)
    assert at_loss(f_s[:, perm], f_t).item() == pytest.approx(at_loss(f_s, f_t).item(), rel=1e-12)
    q = f_s.pow(2).mean(1).flatten(1)
    assert torch.allclose(attention_map(f_s), q / q.norm(dim=1, keepdim=True))
    for p in (1.0, 3.0, 4.0):  # |f|^p for other p (odd p needs the absolute value)
        q = f_s.abs().pow(p).mean(1).flatten(1)
        assert torch.allclose(attention_map(f_s, p), q / q.norm(dim=1, keepdim=True))
    # a larger map is pooled to the smaller one's size
    big = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    assert at_loss(big, f_t).item() == pytest.approx(at_loss(F.adaptive_avg_pool2d(big, 4), f_t).item(), rel=1e-12)


@pytest.mark.numerics
def test_rkd_is_invariant_to_scaling_both_embeddings():
    from kdbench.methods.rkd import rkd_angle_loss, rkd_distance_loss

    # float64: scaling changes only the rounding of 15 pairwise distances and their mean (eps64 = 2.2e-16)
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    for fn in (rkd_distance_loss, rkd_angle_loss):
        assert fn(3.0 * s, 0.5 * t).item() == pytest.approx(fn(s, t).item(), rel=1e-12)
    assert rkd_distance_loss(s, s).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(s, 2 * s).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.numerics
def test_rkd_distance_loss_equals_direct_computation():
    from kdbench.methods.rkd import rkd_distance_loss

    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def norm_d(e):
        d = [[math.dist(a.tolist(), b.tolist()) for b in e] for a in e]
        mean = sum(x for row in d for x in row if x > 0) / sum(1 for row in d for x in row if x > 0)
        return torch.tensor(d, dtype=torch.float64) / mean

    expected = F.smooth_l1_loss(norm_d(s), norm_d(t))
    assert rkd_distance_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.numerics
def test_crd_nce_loss_equals_direct_computation():
    from kdbench.methods.crd import nce_loss

    scores = torch.tensor([[0.5, 0.1, 0.2, 0.05], [0.9, 0.3, 0.01, 0.2]], dtype=torch.float64)
    n_data, k = 100, 3
    pn = 1 / n_data
    total = 0.0
    for row in scores.tolist():
        total += math.log(row[0] / (row[0] + k * pn + 1e-7))
        total += sum(math.log(k * pn / (x + k * pn + 1e-7)) for x in row[1:])
    assert nce_loss(scores, n_data).item() == pytest.approx(-total / 2, rel=1e-9)


def test_crd_memory_bank_size_is_dataset_size_x_dim_x_2():
    m, _ = _build("crd", "cifar100/resnet32x4-resnet8x4", n_train=500)
    assert m.report()["memory_bank_shape"] == [2, 500, 128]
    assert m.report()["memory_bank_bytes"] == 2 * 500 * 128 * 4


def test_crd_normaliser_is_estimated_once_and_memory_is_updated():
    m, labels = _build("crd", "cifar100/resnet56-resnet20", n_train=200)
    batch = _batch(labels)
    before = m.memory.memory_s[batch.indices].clone()
    m.step(batch, 0)
    z = m.memory.z.clone()
    assert (z > 0).all()
    after = m.memory.memory_s[batch.indices]
    assert not torch.allclose(before, after) and torch.allclose(after.norm(dim=1), torch.ones(len(after)))
    m.step(_batch(labels, 4), 0)
    assert torch.equal(m.memory.z, z)


@pytest.mark.numerics
def test_crd_dense_and_gathered_scores_are_the_same_numbers(monkeypatch):
    """The whole-bank product and the authors' row gather give equal scores and gradients,
    also when the banks are updated in place before the backward pass (as in a step)."""
    import kdbench.methods.crd as crd

    idx = torch.randint(0, 300, (5, 41), generator=torch.Generator().manual_seed(0))
    results = []
    for ratio in (10**9, 0):  # dense, then gathered
        monkeypatch.setattr(crd, "DENSE_RATIO", ratio)
        torch.manual_seed(0)
        mem = crd.ContrastMemory(16, 300, 0.07, 0.5).double()
        g = torch.Generator().manual_seed(1)
        v_s, v_t = (torch.nn.functional.normalize(torch.randn(5, 16, generator=g, dtype=torch.float64), dim=1)
                    .requires_grad_() for _ in range(2))
        out_s, out_t = mem.scores(v_s, v_t, idx)
        mem.update(v_s.detach(), v_t.detach(), idx[:, 0])
        (crd.nce_loss(out_s, 300) + crd.nce_loss(out_t, 300)).backward()
        results.append([out_s.detach(), out_t.detach(), v_s.grad, v_t.grad, mem.memory_s.clone()])
    # In float64 the two paths differ only in summation order: 16-term dot products (a few eps64 = 2.2e-16
    # each, times 1 / 0.07 through the exp) and 41-term gradient sums. (In float32 they differ by up to ~2e-7
    # at scores of ~0.006 with two threads, a difference of rounding, not of method.)
    assert len(results[0]) == 5 and all(r.dtype == torch.float64 for r in results[0] + results[1])
    for dense, gathered in zip(*results):
        torch.testing.assert_close(dense, gathered, rtol=1e-12, atol=1e-12 * float(dense.abs().max()))


@pytest.mark.parametrize("mode,negatives", [("exact", "other_class"), ("relax", "other_class"),
                                            ("exact", "uniform")])
def test_crd_sampler_draws_positives_and_negatives_as_the_authors_sampler(mode, negatives):
    from kdbench.methods.crd import NegativeSampler

    labels = torch.arange(300) % 10
    k = 50
    s = NegativeSampler(labels, k, mode, negatives, seed=0)
    idx = torch.tensor([0, 11, 25, 299])
    out = s(idx, labels[idx])
    assert out.shape == (4, 1 + k)
    if mode == "exact":
        assert torch.equal(out[:, 0], idx)
    else:
        assert torch.equal(labels[out[:, 0]], labels[idx])
    if negatives == "other_class":
        assert (labels[out[:, 1:]] != labels[idx][:, None]).all()
        assert all(len(set(row.tolist())) == k for row in out[:, 1:])  # without replacement
    # more negatives than other-class samples: with replacement, still other classes
    small = NegativeSampler(labels[:20], 64, "exact", "other_class", seed=0)
    o = small(torch.tensor([3]), labels[3:4])
    assert (labels[o[:, 1:]] != labels[3]).all()


@pytest.mark.numerics
def test_dml_loss_equals_ce_plus_kl_by_hand():
    from kdbench.methods.dml import dml_loss

    z1 = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    ce, kl = dml_loss(z1, [z2], y)
    p1, p2 = torch.softmax(z1, 1)[0].tolist(), torch.softmax(z2, 1)[0].tolist()
    assert ce.item() == pytest.approx(-math.log(p1[0]))
    assert kl.item() == pytest.approx(sum(b * math.log(b / a) for a, b in zip(p1, p2)))


@pytest.mark.numerics
def test_dml_sequential_update_uses_the_updated_peer():
    """Paper Algorithm 1: member 2's KL target is member 1's prediction after member 1's update."""
    from kdbench.methods.dml import dml_loss

    m, labels = _build("dml", "cifar100/resnet56-resnet20")
    batch = _batch(labels)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    ref = copy.deepcopy(m)
    m.train_step(batch, 0, opt, lambda: torch.autocast("cpu", enabled=False))
    # replay by hand
    ref.train()
    s, p = ref.student, ref.peers[0]
    ref_opt = torch.optim.SGD(ref.trainable_parameters(), lr=0.1)
    z1, z2 = s(batch.images).logits, p(batch.images).logits
    ce, kl = dml_loss(z1, [z2], batch.labels)
    ref_opt.zero_grad(set_to_none=True)
    (ce + kl).backward()
    ref_opt.step()
    state = {k: v.clone() for k, v in s.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        z1_new = s(batch.images).logits
    s.load_state_dict(state, strict=False)
    ce2, kl2 = dml_loss(z2, [z1_new], batch.labels)
    ref_opt.zero_grad(set_to_none=True)
    (ce2 + kl2).backward()
    ref_opt.step()
    for k, v in m.state_dict().items():
        assert torch.allclose(v.float(), ref.state_dict()[k].float(), atol=1e-6), k


def test_dml_evaluates_every_cohort_member():
    m, _ = _build("dml", "cifar100/resnet56-resnet20")
    assert list(m.eval_models()) == ["student", "peer1"]
    assert m.extra_trainable_parameters() == sum(p.numel() for p in m.peers.parameters())


# -- bad input -----------------------------------------------------------------------

def test_dml_given_a_teacher_fails_before_training():
    student, teacher = create_model("resnet8", 10), create_model("resnet20", 10)
    ctx = MethodContext(DatasetInfo("x", 10, (3, 32, 32), 10), student.feature_spec((3, 32, 32)),
                        teacher.feature_spec((3, 32, 32)), 0, student_arch="resnet8")
    with pytest.raises(KDBenchError, match="without a teacher"):
        create_method(compose(["method=dml"]).method, student, teacher, ctx)


def test_crd_without_sample_indices_fails_before_training():
    student, teacher = create_model("resnet8", 10), create_model("resnet20", 10)
    ctx = MethodContext(DatasetInfo("nolabels", 10, (3, 32, 32), 10, has_indices=False),
                        student.feature_spec((3, 32, 32)), teacher.feature_spec((3, 32, 32)), 0)
    with pytest.raises(KDBenchError, match="index and label"):
        create_method(compose(["method=crd"]).method, student, teacher, ctx)


def test_feature_method_on_a_model_without_feature_maps_fails_before_training():
    from kdbench.models import FeatureSpec

    student, teacher = create_model("resnet8", 10), create_model("resnet20", 10)
    flat = FeatureSpec((3, 32, 32), (), 64, 10, False)
    ctx = MethodContext(DatasetInfo("x", 10, (3, 32, 32), 10), flat, teacher.feature_spec((3, 32, 32)), 0)
    for method in ("fitnet", "at"):
        with pytest.raises(KDBenchError, match="feature map"):
            create_method(compose([f"method={method}"]).method, student, teacher, ctx)


def test_unknown_hyper_parameter_is_named():
    student, teacher = create_model("resnet8", 10), create_model("resnet20", 10)
    ctx = MethodContext(DatasetInfo("x", 10, (3, 32, 32), 10), student.feature_spec((3, 32, 32)),
                        teacher.feature_spec((3, 32, 32)), 0)
    with pytest.raises(KDBenchError, match="tempreature"):
        create_method({"name": "kd", "tempreature": 4, "temperature": 4, "ce_weight": 0.1, "kd_weight": 0.9},
                      student, teacher, ctx)


@pytest.mark.parametrize("method", [n for n in METHOD_NAMES if METHODS.get(n).obj.uses_teacher])
def test_teacher_in_inference_mode_gives_the_same_losses_and_gradients(method):
    """The fast path runs the teacher in inference mode; its outputs are copied before any
    loss saves them for backward, so nothing changes but speed."""
    results = []
    for inference in (False, True):
        m, labels = _build(method, "cifar100/resnet56-resnet20")
        m.teacher.inference_mode = inference
        m.train()
        out = m.step(_batch(labels), 0)
        sum(out.losses.values()).backward()
        results.append(({k: v.detach() for k, v in out.losses.items()},
                        [p.grad.clone() for p in m.trainable_parameters() if p.grad is not None]))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a.keys() == loss_b.keys() and all(torch.equal(loss_a[k], loss_b[k]) for k in loss_a)
    assert len(grad_a) == len(grad_b) > 0 and all(torch.equal(a, b) for a, b in zip(grad_a, grad_b))


def test_inference_mode_teacher_outputs_are_usable_by_autograd():
    m, labels = _build("kd", "cifar100/resnet56-resnet20")
    m.teacher.inference_mode = True
    x = _batch(labels).images
    t = m.teacher_forward(x)
    assert not t.logits.is_inference() and not t.logits.requires_grad
    s = m.student(x).logits
    (t.logits * F.log_softmax(s, 1)).sum().backward()  # the product saves the teacher's tensor
    with torch.inference_mode():
        raw = m.teacher(x).logits
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        (raw * F.log_softmax(m.student(x).logits, 1)).sum().backward()


@pytest.mark.parametrize("method", ["crd", "rkd"])
def test_relational_losses_run_in_fp32_under_bf16_autocast(method, monkeypatch):
    """The engine's GPU default is bf16 autocast; CRD's scores (dot products / 0.07) and RKD's
    distances and angles must still be computed in fp32, as the papers' code does."""
    import kdbench.methods.crd as crd
    import kdbench.methods.rkd as rkd

    seen = []
    if method == "crd":
        orig = crd.nce_loss
        monkeypatch.setattr(crd, "nce_loss", lambda scores, n: seen.append(scores.dtype) or orig(scores, n))
    else:
        orig = rkd._angles
        monkeypatch.setattr(rkd, "_angles", lambda e: seen.append(orig(e).dtype) or orig(e))
    m, labels = _build(method, "cifar100/resnet56-resnet20")
    m.train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m.step(_batch(labels), 0)
        assert out.logits.dtype == torch.bfloat16  # the networks did run under autocast
    assert seen and all(d == torch.float32 for d in seen), seen


@pytest.mark.numerics
def test_the_frozen_teacher_stays_frozen_and_out_of_checkpoints():
    from kdbench.training.frozen_teacher import FrozenTeacher

    m, labels = _build("kd", "cifar100/resnet56-resnet20")
    assert isinstance(m.teacher, FrozenTeacher)
    m.train()
    assert not m.teacher.training and not m.teacher.model.training
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert not any(k.startswith("teacher.") for k in m.checkpoint_state())
    assert all(id(p) not in {id(q) for q in m.teacher.parameters()} for p in m.trainable_parameters())
    before = m.teacher_forward(_batch(labels).images).logits
    m.teacher.prepare((3, 32, 32), fold_bn=True, inference_mode=True, memory_format=torch.channels_last)
    assert m.teacher.folded > 0 and m.teacher.inference_mode
    after = m.teacher_forward(_batch(labels).images).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


def test_the_crd_suite_is_the_crd_table_and_leaves_out_exactly_the_cells_fsp_refuses():
    from kdbench.experiment.catalog import method_order
    from kdbench.orchestration.suite import load_suite, suite_runs

    order = method_order()
    s = load_suite(["suite=crd-cifar100"])
    assert len(s.pairs) == len(set(s.pairs)) == 13 and all(p.startswith("cifar100/") for p in s.pairs)
    assert list(s.methods) == order[:order.index("crd+kd") + 1]
    assert set(s.exclude) == {"fsp"} and set(s.exclude.fsp) == {p for p in CIFAR_PAIRS if not _same_channels(p)}
    runs = suite_runs(s, [])
    assert len(runs) == 3 * (13 * 15 - 7)
