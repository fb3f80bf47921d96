"""A method is declared in one place: how tables show it, its card, its shared loss pieces and the
values its hyper-parameters may take all come from its module and its registration."""
from __future__ import annotations

import inspect
import math
import re
import sys
from typing import Annotated, Literal

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.crd import NegativeSampler

from kdbench import KDBenchError
from kdbench.compute.seeding import class_groups, class_partners
from kdbench.data import DatasetInfo
from kdbench.experiment.catalog import Range, display_name, method_order, method_rank, survey_name, survey_teacher
from kdbench.method import METHODS, Method, MethodContext, StepOutput, create_method, register_method, soft_kl
from kdbench.models import create_model
from kdbench.orchestration.config import compose
from kdbench.report.tables import display
from kdbench.training.losses import kl_divergence

CRD_TABLE = ["vanilla", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd",
             "crd+kd", "dkd", "reviewkd", "takd", "dml", "one", "tf-kd-self", "tf-kd-reg", "byot", "cs-kd"]
# issue 25's methods, in the order they register
LATER = ["dist", "nkd", "ofd", "kdsvd", "irg", "wsld", "ickd", "ctkd", "srd", "cat-kd"]


@pytest.fixture
def registered():
    """Register test methods and remove them afterwards."""
    names = []

    def reg(name: str, **kw):
        names.append(name)
        return register_method(name, category="response", scheme="offline", **kw)

    yield reg
    for n in names:
        METHODS._entries.pop(n, None)


class _Logits(Method):
    def step(self, batch, epoch):
        z = self.student(batch.images).logits
        return StepOutput(z, {"ce": F.cross_entropy(z, batch.labels)})


# -- display names and order -----------------------------------------------------------------

def test_display_names_order_and_survey_names_come_from_the_registration():
    assert method_order() == CRD_TABLE + LATER  # the CRD benchmark's table, then the later methods; baseline first
    assert [display_name(m) for m in ("vanilla", "kd", "fitnet", "crd+kd", "reviewkd", "tf-kd-self", "cs-kd")] == [
        "Student (vanilla)", "KD", "FitNet", "CRD+KD", "ReviewKD", "TF-KD (self)", "CS-KD"]
    assert survey_name("tf-kd-self") == "tf-kd" and survey_name("kd") == "kd"
    assert survey_teacher("one", "resnet32") == "resnet32+one" and survey_teacher("dml", "resnet32") is None
    assert display("kd (temperature=1)", "kd") == "KD (temperature=1)"
    for name in CRD_TABLE[1:] + LATER:
        meta = METHODS.get(name).meta
        assert meta["paper"], f"{name} names no paper"
        assert meta["paper"].split()[0].rstrip(",") in METHODS.get(name).obj.card().splitlines()[0], name


def test_a_method_without_display_metadata_is_shown_by_its_id_after_the_built_ins(registered):
    @registered("aa-plug")
    class Plug(_Logits):
        """Plug: a test plug-in's own card."""

    assert display_name("aa-plug") == "aa-plug" and survey_name("aa-plug") == "aa-plug"
    assert method_rank("aa-plug") > method_rank("cs-kd") and "aa-plug" not in method_order()
    # records of a method that is not registered here at all (a plug-in's, read elsewhere)
    assert display_name("zz-elsewhere") == "zz-elsewhere" and display("zz-elsewhere (x=1)", "zz-elsewhere") == (
        "zz-elsewhere (x=1)")
    assert method_rank("aa-plug") < method_rank("zz-elsewhere")


def test_a_plugin_may_place_itself_among_the_built_ins(registered):
    @registered("aa-between", display="Between", order=1.5)
    class Between(_Logits):
        """Between: a test plug-in."""

    assert method_order()[:4] == ["vanilla", "kd", "aa-between", "fitnet"]
    assert display_name("aa-between") == "Between"


# -- the card ----------------------------------------------------------------------------------

def test_the_card_is_the_defining_modules_docstring():
    for entry in METHODS:
        cls = entry.obj
        if not cls.__module__.startswith("kdbench.methods."):
            continue
        assert not cls.__dict__.get("__doc__"), f"{entry.name}: the card belongs in the module docstring"
        assert cls.card() == inspect.cleandoc(sys.modules[cls.__module__].__doc__)
    assert METHODS.get("kd").obj.card().startswith("KD: Hinton")
    assert METHODS.get("crd+kd").obj.card() == METHODS.get("crd").obj.card()


def test_a_class_docstring_is_the_card_and_a_module_docstring_the_fallback(registered):
    @registered("aa-own")
    class Own(_Logits):
        """Own: the class's card.

        More."""

    @registered("aa-none")
    class NoDoc(_Logits):
        pass

    assert Own.card() == "Own: the class's card.\n\nMore." and METHODS.get("aa-own").description == (
        "Own: the class's card.")
    assert NoDoc.card() == inspect.cleandoc(__doc__)
    assert METHODS.get("aa-none").description == __doc__.splitlines()[0]


# -- hyper-parameters: Literal and Range annotations --------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["method=tf-kd-reg", "method.alpha=2"], "method.alpha=2.0 must be in [0, 1]"),
    (["method=tf-kd-reg", "method.correct_prob=1"], "method.correct_prob=1.0 must be in (0, 1)"),
    (["method=kd", "method.temperature=0"], "method.temperature=0.0 must be > 0"),
    (["method=dkd", "method.warmup=0"], "method.warmup=0 must be >= 1"),
    (["method=ft", "method.init_lr=-1"], "method.init_lr=-1.0 must be > 0"),
    (["method=dml", "method.update=bogus"], "method.update='bogus' is not one of: sequential, simultaneous"),
    (["method=fitnet", "method.stages=3"], "method.stages=3 is not one of: 1, 2"),
    (["method=crd", "method.mode=loose"], "method.mode='loose' is not one of: exact, relax"),
])
def test_an_annotated_range_or_choice_refuses_a_value_at_composition(overrides, message):
    with pytest.raises(KDBenchError) as err:
        compose(overrides)
    assert message in str(err.value)


def test_values_inside_the_annotations_compose_and_keep_their_defaults():
    assert compose(["method=ft", "method.init_lr=null"]).method.init_lr is None
    assert compose(["method=fitnet", "method.stages=2"]).method.stages == 2
    assert compose(["method=tf-kd-reg", "method.alpha=1"]).method.alpha == 1.0
    cfg = compose(["method=crd"]).method
    assert (cfg.mode, cfg.negatives, cfg.nce_t) == ("exact", "other_class", 0.07)


def test_a_method_built_from_an_uncomposed_config_is_refused_the_same_way():
    student, teacher = create_model("resnet8", 10), create_model("resnet20", 10)
    ctx = MethodContext(DatasetInfo("x", 10, (3, 32, 32), 10), student.feature_spec((3, 32, 32)),
                        teacher.feature_spec((3, 32, 32)), 0)
    with pytest.raises(KDBenchError, match=r"method.temperature=-4.0 must be > 0"):
        create_method({"name": "kd", "temperature": -4.0, "ce_weight": 0.1, "kd_weight": 0.9}, student, teacher, ctx)


def test_annotations_of_a_plugin_module_with_postponed_evaluation_are_read(registered):
    # this module has `from __future__ import annotations`: the hints are strings until read
    @registered("aa-hinted")
    class Hinted(_Logits):
        """Hinted: a test plug-in."""

        def __init__(self, student, teacher, ctx, *, w: Annotated[float, Range(ge=0, lt=2)] = 1.0,
                     how: Literal["a", "b"] = "a") -> None:
            super().__init__(student, teacher, ctx)

    for bad, message in (("method.w=2", "method.w=2.0 must be in [0, 2)"), ("method.how=c", "is not one of: a, b")):
        with pytest.raises(KDBenchError, match=re.escape(message)):
            compose(["method=aa-hinted", bad])
    assert compose(["method=aa-hinted", "method.w=1.5"]).method.w == 1.5


def test_range_reads_as_the_interval_it_is():
    assert [str(r) for r in (Range(gt=0), Range(ge=1), Range(ge=0, le=1), Range(gt=0, lt=1), Range(lt=3))] == [
        "> 0", ">= 1", "in [0, 1]", "in (0, 1)", "< 3"]
    assert 0 not in Range(gt=0) and 1 in Range(ge=0, le=1) and 1 not in Range(gt=0, lt=1)
    with pytest.raises(ValueError):
        Range(ge=0, gt=0)


# -- shared loss pieces --------------------------------------------------------------------------

def _hand_kl_rows(s: torch.Tensor, t: torch.Tensor, T: float) -> list[float]:
    rows = []
    for zs, zt in zip(s.tolist(), t.tolist()):
        q = [math.exp(v / T) for v in zs]
        p = [math.exp(v / T) for v in zt]
        q, p = [x / sum(q) for x in q], [x / sum(p) for x in p]
        rows.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q)))
    return rows


def test_soft_kl_equals_the_hand_formula_in_every_form():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    for T in (1.0, 3.0):
        rows = _hand_kl_rows(s, t, T)
        for log_target in (True, False):
            kw = {"log_target": log_target}
            assert math.isclose(soft_kl(s, t, T, **kw).item(), sum(rows) / 3 * T * T, rel_tol=1e-12)
            assert math.isclose(soft_kl(s, t, T, t_squared=False, **kw).item(), sum(rows) / 3, rel_tol=1e-12)
            assert math.isclose(soft_kl(s, t, T, reduction="mean", t_squared=False, **kw).item(), sum(rows) / 15,
                                rel_tol=1e-12)
            per = soft_kl(s, t, T, reduction="per_sample", **kw)
            assert per.shape == (3,)
            assert all(math.isclose(a, b * T * T, rel_tol=1e-12) for a, b in zip(per.tolist(), rows))
    with pytest.raises(ValueError):
        kl_divergence(s, t, reduction="sum")


def test_soft_kl_detaches_the_target_only_when_asked():
    s, t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    soft_kl(s, t, 2.0, detach_target=True).backward()
    assert s.grad is not None and t.grad is None
    soft_kl(s, t, 2.0).backward()
    assert t.grad is not None


# -- class grouping ------------------------------------------------------------------------------

def test_class_groups_is_the_grouping_behind_cs_kd_partners_and_crd_negatives():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    order, counts, starts = class_groups(labels)
    assert order.tolist() == [1, 4, 6, 3, 0, 2, 5] and counts.tolist() == [3, 1, 3] and starts.tolist() == [0, 3, 4]
    sampler = NegativeSampler(labels, 3, "relax", "other_class", seed=0)
    assert torch.equal(sampler.by_class, order) and torch.equal(sampler.counts, counts)
    partners = class_partners(labels, 0, 0)
    assert torch.equal(labels[partners], labels)
