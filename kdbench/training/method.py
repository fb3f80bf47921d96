"""The method interface: what every distillation algorithm implements.

A method is an ``nn.Module`` owning the student, the frozen teacher (or none)
and any trainable helpers. The engine calls :meth:`Method.step` per batch and
sums the named loss terms it returns; it knows nothing else about the method.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdbench.core.errors import KDBenchError
from kdbench.data import Batch, DatasetInfo
from kdbench.experiment.catalog import METHODS, method_defaults  # noqa: F401  (method_defaults re-exported)
from kdbench.experiment.identity import check_method_hparams
from kdbench.experiment.schema import CATEGORIES, SCHEMES  # noqa: F401  (the one list; re-exported for plug-ins)
from kdbench.models import FeatureSpec, KDModel, ModelOutput
from kdbench.training.dot import DOT_DELTA, TASK_TERMS, dot_step, is_dot, split_losses
from kdbench.training.frozen_teacher import FrozenTeacher, frozen_state_prefixes

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """One training step's result: the primary student's logits and weighted loss terms.

    ``logits`` may be None in an initialisation stage that does not run the student (FT's
    paraphraser); the epoch's training accuracy is then not reported."""

    logits: Tensor | None
    losses: dict[str, Tensor]


MAIN_STAGE = "main"


@dataclass(frozen=True)
class InitStage:
    """Epochs trained before the schedule's, with their own optimizer over ``modules`` only.

    The initialisation phases of AB, FT and FSP and FitNets' paper form. During them
    ``method.stage`` is ``name`` and ``step`` receives the epoch within the stage; the
    learning rate is held at ``lr`` (the schedule's base rate when None), as in the CRD
    benchmark's ``init``. The engine counts, records and checkpoints these epochs like any
    other (resumable mid-stage); the schedule's epochs, data order and evaluation follow
    unchanged, so every method's main stage sees the same batches.
    """

    name: str
    epochs: int
    modules: tuple[nn.Module, ...]
    lr: float | None = None


@dataclass(frozen=True)
class MethodContext:
    """Static facts a method may use to build its helpers before training."""

    data: DatasetInfo
    student_spec: FeatureSpec
    teacher_spec: FeatureSpec | None
    seed: int
    # Labels of the training split by sample index, on the training device
    # (CRD draws its negatives from them); None where a dataset cannot provide them.
    train_labels: Tensor | None = None
    student_arch: str = ""
    teacher_arch: str | None = None
    # the schedule's epoch count (0 where unknown): for methods whose weights ramp over training (ONE)
    epochs: int = 0


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement :meth:`step`.

    Hyper-parameters are keyword-only ``__init__`` arguments whose defaults are the
    method's defaults (the single place they live; a subclass may change some in
    ``defaults``); Hydra sees them as the ``method/NAME`` config, so the command
    line overrides them as ``method.KEY=...``.
    """

    name: ClassVar[str] = ""
    category: ClassVar[str] = "none"
    scheme: ClassVar[str] = "none"
    uses_teacher: ClassVar[bool] = True
    #: whose architecture the teacher has: "pair" (the pair's teacher) or "student" (a trained copy of the
    #: student, e.g. TF-KD self); see ``identity.teacher_config``
    teacher_arch: ClassVar[str] = "pair"
    #: whether training batches bring each sample's same-class partner (``Batch.pair_images``; CS-KD)
    paired_batches: ClassVar[bool] = False
    #: defaults that differ from (or are missing in) ``__init__``'s keyword defaults, e.g. a subclass's
    defaults: ClassVar[dict[str, Any]] = {}
    #: digest of the student's weights before training, set by ``build_method`` (the fairness record)
    student_init_sha256: str | None = None
    #: the stage being trained: an :class:`InitStage`'s name, or ``MAIN_STAGE``; set by the engine
    stage: str = MAIN_STAGE
    #: DOT's ``delta`` when the main stage trains with DOT (:meth:`use_optimizer`), else None: plain SGD
    dot_delta: float | None = None
    #: the loss terms DOT treats as the task loss; every other term is the distillation loss (kdbench.training.dot)
    task_terms: ClassVar[tuple[str, ...]] = TASK_TERMS

    def __init__(self, student: KDModel, teacher: KDModel | None, ctx: MethodContext) -> None:
        super().__init__()
        if self.uses_teacher and teacher is None:
            raise KDBenchError(f"method {self.name!r} needs a teacher, but none was given")
        if not self.uses_teacher and teacher is not None:
            raise KDBenchError(f"method {self.name!r} trains without a teacher, but one was given")
        self.student = student
        # The frozen teacher owns eval mode, no-grad, its fast paths and its absence from checkpoints.
        self.teacher = FrozenTeacher(teacher) if teacher is not None and not isinstance(
            teacher, FrozenTeacher) else teacher
        self.ctx = ctx

    # -- what subclasses implement -------------------------------------------------
    def step(self, batch: Batch, epoch: int) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_step(self, batch: Batch, epoch: int, optimizer: torch.optim.Optimizer,
                   autocast: Callable[[], contextlib.AbstractContextManager]) -> StepOutput:
        """One optimisation step: forward under ``autocast``, sum the losses, backward, step.

        Methods whose paper prescribes another update order (DML's sequential
        updates) override this; everything else only implements :meth:`step`. With DOT
        (:meth:`use_optimizer`) the terms are split into task and distillation losses, each
        with its own backward pass (:func:`kdbench.training.dot.dot_step`).
        """
        with autocast():
            out = self.step(batch, epoch)
        if is_dot(optimizer):
            dot_step(optimizer, *split_losses(out.losses, self.task_terms))
            return out
        optimizer.zero_grad(set_to_none=True)
        sum(out.losses.values()).backward()
        optimizer.step()
        return out

    def use_optimizer(self, optimizer: str, dot_delta: float = DOT_DELTA) -> None:
        """Train the main stage with the schedule's SGD (``"sgd"``) or with DOT (``"dot"``, momentum gap
        ``dot_delta``): for a method offering ``optimizer: OptimizerChoice`` and ``dot_delta: DotDelta``."""
        require(optimizer in ("sgd", "dot"), f"method.optimizer={optimizer!r} is not one of: sgd, dot")
        require(optimizer == "dot" or dot_delta == DOT_DELTA,
                f"method.dot_delta={dot_delta!r} applies with method.optimizer=dot only")
        self.dot_delta = float(dot_delta) if optimizer == "dot" else None

    # -- defaults subclasses may override -----------------------------------------
    def init_stages(self) -> list[InitStage]:
        """Stages trained before the schedule (none by default); see :class:`InitStage`."""
        return []

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimizer updates: everything but frozen teachers."""
        return [m for m in self.children() if not isinstance(m, FrozenTeacher)]

    def eval_models(self) -> dict[str, nn.Module]:
        """Models evaluated each epoch; the first is the one reported and selected on."""
        return {"student": self.student}

    # -- shared helpers -------------------------------------------------------------
    def trainable_parameters(self, modules: list[nn.Module] | tuple[nn.Module, ...] | None = None
                             ) -> Iterator[nn.Parameter]:
        """Parameters of ``modules`` (default: :meth:`trainable_modules`) that need gradients, each once."""
        seen: set[int] = set()
        for m in self.trainable_modules() if modules is None else modules:
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def extra_trainable_parameters(self) -> int:
        """Trainable parameters beyond the student's (regressors, embeddings, ...), in any stage."""
        counted = {id(p) for p in self.student.parameters()}
        total = 0
        for modules in [None, *(s.modules for s in self.init_stages())]:
            for p in self.trainable_parameters(modules):
                if id(p) not in counted:
                    counted.add(id(p))
                    total += p.numel()
        return total

    def teacher_forward(self, x: Tensor) -> ModelOutput:
        """The frozen teacher's outputs without autograd history (:class:`FrozenTeacher`); call it
        once per step and share the result between loss terms."""
        assert self.teacher is not None
        return self.teacher(x)

    def checkpoint_state(self) -> dict[str, Tensor]:
        """State to checkpoint: everything except frozen teachers (the cache holds them)."""
        frozen = frozen_state_prefixes(self)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen or ("\0",))}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = frozen_state_prefixes(self)
        missing = [k for k in missing if not k.startswith(frozen or ("\0",))]
        if missing or unexpected:
            raise KDBenchError(f"checkpoint does not match method {self.name!r}: "
                               f"missing {missing}, unexpected {unexpected}")

    def report(self) -> dict[str, Any]:
        """Method-specific facts for the result record (e.g. CRD's memory-bank size)."""
        return {}

    @classmethod
    def card(cls) -> str:
        """The method's card: the docstring of the module that defines it (one module per method, the card at
        its top), or the class's own docstring where the class has one (a plug-in's class among others)."""
        return inspect.cleandoc(_card_text(cls) or f"{cls.__name__} (no card yet)")


def _card_text(cls: type) -> str | None:
    own = cls.__dict__.get("__doc__")
    if own:
        return own
    module = sys.modules.get(cls.__module__)
    return getattr(module, "__doc__", None)


def register_method(name: str, category: str, scheme: str, description: str = "", *, display: str | None = None,
                    order: float | None = None, survey_name: str | None = None, survey_teacher: str | None = None,
                    paper: str = "", code: str = "") -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("kd", category="response", scheme="offline", display="KD", ...)``.

    Everything about a method is declared here, once, including how tables show it: ``display`` (the name in
    tables; default the id), ``order`` (the row's position: built-ins follow the CRD benchmark's table, then
    the later methods; a method without one comes after them, alphabetically), ``survey_name`` (its id in
    the survey's reference table where that differs; ``""`` where the survey's row of the same id is another
    method), ``survey_teacher`` (what that table names as its
    teacher, formatted with ``{student}``, where the records cannot say), and ``paper`` / ``code`` (the
    citation, and the repository whose code the implementation follows). ``description`` defaults to the
    card's first line.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")

    def deco(cls: type[Method]) -> type[Method]:
        cls.name, cls.category, cls.scheme = name, category, scheme
        card = _card_text(cls)
        desc = description or (inspect.cleandoc(card).strip().splitlines()[0] if card and card.strip() else "")
        return METHODS.register(name, desc, category=category, scheme=scheme, display=display or name, order=order,
                                survey_name=name if survey_name is None else survey_name,
                                survey_teacher=survey_teacher, paper=paper,
                                code=code)(cls)

    return deco


def register_method_configs() -> None:
    """Every registered method (built-in or plug-in) as a ``method/NAME`` node of Hydra's ConfigStore, so
    ``method=NAME`` works with no search-path flag. Called before each composition."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for entry in METHODS:
        cs.store(group="method", name=entry.name, node=method_defaults(entry.name))


def method_hparams(cfg: DictConfig | dict) -> dict[str, Any]:
    """The method config minus its ``name``: the keyword arguments of ``__init__``."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d.pop("name", None)
    return d


def create_method(cfg: DictConfig | dict, student: KDModel, teacher: KDModel | None,
                  ctx: MethodContext) -> Method:
    """Build the method named by ``cfg.name`` with the hyper-parameters in ``cfg``."""
    name = cfg["name"]
    cls = METHODS.get(name).obj
    hparams = method_hparams(cfg)
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in list(sig.parameters)[4:]]  # after self, student, teacher, ctx
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = sorted(set(hparams) - set(accepted))
    if unknown and not has_var_kw:
        raise KDBenchError(f"method {name!r} has no hyper-parameter(s) {unknown}; valid: {accepted}")
    missing = [p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty
               and sig.parameters[p].kind is inspect.Parameter.KEYWORD_ONLY and p not in hparams]
    if missing:
        raise KDBenchError(f"method {name!r} needs hyper-parameter(s) {missing} in its config")
    check_method_hparams(name, hparams)
    return cls(student, teacher, ctx, **hparams)


def build_method(method_cfg: DictConfig | dict, student: KDModel, info: DatasetInfo, seed: int, *,
                 teacher: KDModel | None = None, student_arch: str = "", teacher_arch: str | None = None,
                 train_labels: Tensor | None = None, epochs: int = 0) -> Method:
    """The one way to make a method (runs, teacher training, speed, ``show``, tests).

    The context is read off the models; the method's own helpers (regressors, heads, peers)
    are initialised from a stream derived from (seed, "method-init", name), so they never shift
    the student's initialisation or the data order, and the same seed builds the same helpers.
    The student's initial weights are digested first (``method.student_init_sha256``).
    """
    from kdbench.compute.seeding import derive_seed, state_dict_digest

    init = state_dict_digest(student)
    shape = info.input_shape
    ctx = MethodContext(info, student.feature_spec(shape), teacher.feature_spec(shape) if teacher is not None else None,
                        seed, train_labels=train_labels, student_arch=student_arch,
                        teacher_arch=teacher_arch if teacher is not None else None, epochs=int(epochs))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "method-init", str(method_cfg["name"])))
        method = create_method(method_cfg, student, teacher, ctx)
    method.student_init_sha256 = init
    return method


class PartsView(nn.Module):
    """A model to evaluate that is made of a method's parts (a head on the student, a branch on its trunk,
    an ensemble), for :meth:`Method.eval_models`. The parts sit in a plain list, so nothing is registered
    twice in the method's state, and they follow this view's train/eval mode, so evaluation runs them in
    eval mode like any model."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = list(parts)

    def train(self, mode: bool = True) -> "PartsView":
        super().train(mode)
        for p in self.parts:
            p.train(mode)
        return self


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off for a method's own loss arithmetic.

    Under the engine's bf16 autocast (the CUDA default) matrix products run in
    bf16, about 3 significant digits: enough for the networks, not for losses
    that divide dot products by a temperature of 0.07 (CRD) or compare angles
    (RKD). The papers' code computes these in fp32, so inputs are cast to float
    and the block runs without autocast. A no-op where autocast is off.
    """
    return torch.autocast(device_type=device.type, enabled=False)


def match_sizes(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with the larger feature map average-pooled to the smaller one's height and width, the CRD
    benchmark's rule wherever two maps are compared (AT, NST, VID, FT, FSP)."""
    if a.shape[2] > b.shape[2]:
        a = torch.nn.functional.adaptive_avg_pool2d(a, b.shape[2:])
    elif a.shape[2] < b.shape[2]:
        b = torch.nn.functional.adaptive_avg_pool2d(b, a.shape[2:])
    return a, b


def require(condition: bool, message: str) -> None:
    """Fail before training when a method cannot serve a pair or dataset."""
    if not condition:
        raise KDBenchError(message)
