"""What a run *is*: the experiment part of the config, typed, and the identity hashed from it.

The root config has two kinds of top-level keys (``EXPERIMENT`` and ``RUNTIME``): the
experiment -- protocol, data (minus ``data.source``), pair, method, schedule, seed,
teacher -- is what a table cell stands for; the runtime says how fast or where it runs.
A run's identity is a hash of the experiment part only, built here by inclusion, so a new
engine switch or path can never split or merge cells. Within the experiment:

- the method node carries only the chosen method's own hyper-parameters (the pair's and
  suite's overrides for *this* method are applied into it; other methods' overrides are not
  part of it);
- the teacher enters only for methods that use one, as the choice that makes it (seed and
  schedule, or a pinned cache entry); the teacher's *weights* identify it in records and
  tables (see :mod:`kdbench.orchestration.teacher`);
- precision is resolved (``auto`` -> bf16 on CUDA, fp32 on CPU) and milestones are resolved to
  epochs, so two spellings of one experiment hash alike;
- values are typed first (``seed='1'`` is seed 1, ``temperature=4`` is 4.0; ``seed=abc`` is refused).
"""
from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdbench.core.errors import KDBenchError
from kdbench.core.hashing import digest
from kdbench.experiment.values import Leaf, ListOf, type_node

EXPERIMENT = ("protocol", "data", "pair", "method", "schedule", "seed", "teacher")
RUNTIME = ("engine", "paths", "speed", "bench", "suite", "resume", "force", "retry_failed", "note", "hydra")
RESOLVED_PRECISIONS = ("fp32", "bf16")  # what a record stores: auto resolved on the run's device
PRECISIONS = ("auto", *RESOLVED_PRECISIONS)
PROTOCOLS = ("kdbench", "paper")
# where a dataset's files live and how they are fetched: never part of an experiment (``data.source``)
DATA_SOURCE_KEYS = ("root", "download", "cache_dir", "archive", "extract_dir", "workers", "sha256")


def check_partition(cfg: DictConfig) -> None:
    """Every top-level key is experiment or runtime (a key that is neither is a typo or a new group)."""
    unknown = sorted(set(cfg.keys()) - set(EXPERIMENT) - set(RUNTIME))
    if unknown:
        raise KDBenchError(f"unknown config key(s) {unknown}: top-level keys are {', '.join(EXPERIMENT + RUNTIME)}")


# -- typing --------------------------------------------------------------------------------

FRACTION = Leaf(float, 0, 1, lo_open=True)
SCHEDULE_TYPES = {
    "name": Leaf(str), "epochs": Leaf(int, 1), "batch_size": Leaf(int, 1), "optimizer": Leaf(str, choices=("sgd",)),
    "lr": Leaf(float, 0, lo_open=True), "momentum": Leaf(float, 0, 1), "nesterov": Leaf(bool),
    "weight_decay": Leaf(float, 0), "lr_schedule": Leaf(str, choices=("multistep", "cosine")),
    "gamma": Leaf(float, 0, 1, lo_open=True),
}
DATA_TYPES = {
    "name": Leaf(str), "val_fraction": Leaf(float, 0, 0.99), "test_fraction": Leaf(float, 0, 0.99, lo_open=True),
    "split_seed": Leaf(int, 0), "image_size": Leaf(int, 1), "crop_padding": Leaf(int, 0),
    "max_per_class": Leaf(int, 1, nullable=True), "max_test_per_class": Leaf(int, 1, nullable=True),
    "pipeline": Leaf(str, choices=("device", "dataloader")), "test_split": Leaf(str),
}
PROTOCOL_TYPES = {"name": Leaf(str, choices=PROTOCOLS), "precision": Leaf(str, choices=PRECISIONS)}
SEED = Leaf(int, 0)


def _type_schedule(node: DictConfig, prefix: str) -> None:
    type_node(node, SCHEDULE_TYPES, prefix)
    ms = node.get("milestones")
    if ms is None:
        node.milestones = []
        return
    if not isinstance(ms, (list, tuple)) and not OmegaConf.is_list(ms):
        raise KDBenchError(f"{prefix}.milestones={ms!r} must be a list of fractions of {prefix}.epochs")
    fracs = []
    for m in ms:
        try:
            f = FRACTION(m, f"{prefix}.milestones")
        except KDBenchError:
            raise KDBenchError(
                f"{prefix}.milestones={list(ms)!r}: milestones are fractions of {prefix}.epochs in (0, 1] "
                f"(e.g. [0.625, 0.75, 0.875] = after epochs 150, 180, 210 of 240); {m!r} is not one") from None
        fracs.append(f)
    node.milestones = fracs


class _Declared:
    """A method hyper-parameter as its annotation declares it: the type (with its choices, for a ``Literal``),
    then every :class:`~kdbench.experiment.catalog.Range` of an ``Annotated`` hint."""

    def __init__(self, kind: Leaf, ranges: tuple = ()) -> None:
        self.kind, self.ranges = kind, ranges

    def __call__(self, value: Any, key: str) -> Any:
        v = self.kind(value, key)
        if v is not None:
            for r in self.ranges:
                r.check(v, key)
        return v


def _method_types(name: str) -> dict[str, _Declared]:
    """Types, choices and ranges of a method's hyper-parameters, read from its ``__init__`` annotations:
    ``float``, ``Literal["a", "b"]``, ``Annotated[float, Range(0, 1)]``, each optionally ``| None``."""
    from kdbench.experiment.catalog import METHODS, Range

    cls = METHODS.get(name).obj
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # unresolvable annotations (a plug-in's forward references): leave its values as given
        return {}
    out = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        hint, nullable = hints.get(pname), p.default is None
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            nullable = nullable or len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else None
        ranges: tuple = ()
        if typing.get_origin(hint) is typing.Annotated:
            ranges = tuple(m for m in hint.__metadata__ if isinstance(m, Range))
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
            kinds = {type(c) for c in choices}
            if len(kinds) == 1 and kinds <= {int, str}:
                out[pname] = _Declared(Leaf(kinds.pop(), nullable=nullable, choices=choices), ranges)
        elif hint in (int, float, bool, str):
            out[pname] = _Declared(Leaf(hint, nullable=nullable), ranges)
        elif hint is list or typing.get_origin(hint) is list:  # names (TAKD's assistants, DML's peers; None: default)
            out[pname] = _Declared(ListOf(Leaf(str, nullable=True)))
    return out


def modifier_defaults(name: str) -> dict[str, Any]:
    """The method's :class:`~kdbench.experiment.catalog.Modifier` hyper-parameters and their defaults."""
    from kdbench.experiment.catalog import METHODS, Modifier

    if name not in METHODS.names():
        return {}
    init = METHODS.get(name).obj.__init__
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # a plug-in's unresolvable annotations: no modifiers declared
        return {}
    return {k: p.default for k, p in inspect.signature(init).parameters.items()
            if typing.get_origin(hints.get(k)) is typing.Annotated
            and any(isinstance(m, Modifier) for m in hints[k].__metadata__)}


def method_spec(method: Any) -> dict[str, Any]:
    """The method node as a run's identity holds it: its hyper-parameters, less any modifier at its default."""
    d = OmegaConf.to_container(method, resolve=True) if OmegaConf.is_config(method) else dict(method)
    neutral = modifier_defaults(str(d.get("name")))
    return {k: v for k, v in d.items() if not (k in neutral and v == neutral[k])}


def check_method_hparams(name: str, hparams: typing.Mapping[str, Any]) -> None:
    """Refuse hyper-parameters that the method's annotations rule out, for a method built from a config that
    was not composed (composition types them first, :func:`type_config`); the values are left as given."""
    for key, t in _method_types(name).items():
        if key in hparams:
            t(hparams[key], f"method.{key}")


def type_config(cfg: DictConfig) -> None:
    """Type and range-check every experiment leaf in place, before anything is hashed or run."""
    check_partition(cfg)
    cfg.seed = SEED(cfg.seed, "seed")
    type_node(cfg.protocol, PROTOCOL_TYPES, "protocol")
    type_node(cfg.data, DATA_TYPES, "data")
    _type_schedule(cfg.schedule, "schedule")
    _type_schedule(cfg.teacher.schedule, "teacher.schedule")
    cfg.teacher.seed = SEED(cfg.teacher.seed, "teacher.seed")
    if cfg.teacher.get("hash") is not None:
        cfg.teacher.hash = str(cfg.teacher.hash)
        if not re.fullmatch(r"[0-9a-f]{16}", cfg.teacher.hash):
            raise KDBenchError(f"teacher.hash={cfg.teacher.hash!r}: give the full 16-digit cache key of a teacher "
                               "(`kdbench teacher list` shows them)")
    type_node(cfg.method, _method_types(str(cfg.method.name)), "method")
    if cfg.protocol.name == "paper":
        if float(cfg.data.val_fraction) != 0.0 or cfg.protocol.precision != "fp32":
            raise KDBenchError("protocol=paper trains on the whole training set in fp32: it does not combine with "
                               f"data.val_fraction={cfg.data.val_fraction} or protocol.precision="
                               f"{cfg.protocol.precision} (use protocol=kdbench for those)")


# -- resolution -----------------------------------------------------------------------------

def milestone_epochs(schedule: DictConfig | dict) -> list[int]:
    """The epochs after which the learning rate decays: round(f * epochs) for each fraction f."""
    epochs = int(schedule["epochs"])
    return [round(float(f) * epochs) for f in (schedule.get("milestones") or [])]


def schedule_spec(schedule: DictConfig | dict) -> dict[str, Any]:
    """A schedule as it runs: milestones as epochs (so fractions that round alike are one schedule)."""
    d = OmegaConf.to_container(schedule, resolve=True) if OmegaConf.is_config(schedule) else dict(schedule)
    d["milestones"] = milestone_epochs(schedule)
    return d


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` is bf16 autocast on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The config a run's teacher is found, trained and identified by. Usually ``cfg`` itself; otherwise
    a copy whose ``pair.teacher`` and ``teacher.schedule`` describe the network the method distils from:

    - ``teacher_arch = "student"`` (TF-KD self): a trained copy of the student's architecture, trained
      by the student's schedule as the vanilla student would be;
    - ``teacher_arch = "assistant"`` (TAKD): the last of ``method.assistants``, itself a *distilled*
      run of the student's schedule and ``teacher.seed``, whose own teacher is the pair's teacher (or
      the previous assistant). The copy's ``teacher.assistant`` holds how it is trained
      (:func:`assistant_training_config`), and its identity includes its teacher's.

    Idempotent."""
    from kdbench.experiment.catalog import METHODS

    name = str(cfg.method.name) if cfg.get("method") is not None else ""
    kind = getattr(METHODS.get(name).obj, "teacher_arch", "pair") if name in METHODS.names() else "pair"
    if kind == "student":
        if cfg.pair.teacher == cfg.pair.student and cfg.teacher.schedule == cfg.schedule:
            return cfg
        out = copy.deepcopy(cfg)
        with open_dict(out):
            out.pair.teacher = cfg.pair.student
            out.teacher.schedule = OmegaConf.create(OmegaConf.to_container(cfg.schedule, resolve=True))
        return out
    if kind != "assistant" or cfg.teacher.get("assistant") is not None:
        return cfg
    chain = [str(a) for a in cfg.method.get("assistants") or []]
    if not chain:
        return cfg
    link = OmegaConf.to_container(cfg.method, resolve=True)
    link["assistants"] = chain[:-1]
    if not chain[:-1]:  # the first assistant learns from the pair's teacher by the link's plain KD
        link = {k: v for k, v in link.items() if k != "assistants"}
        link["name"] = "kd"
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.pair.teacher = chain[-1]
        out.teacher.schedule = OmegaConf.create(OmegaConf.to_container(cfg.schedule, resolve=True))
        out.teacher.hash = None  # a pinned teacher is the chain's top, not this assistant
        out.teacher.assistant = {"method": link, "teacher": str(cfg.pair.teacher),
                                 "teacher_schedule": OmegaConf.to_container(cfg.teacher.schedule, resolve=True),
                                 "teacher_hash": cfg.teacher.get("hash")}
    return out


def assistant_training_config(cfg: DictConfig) -> DictConfig:
    """For a teacher config whose teacher is an assistant (:func:`teacher_config`), the run that trains
    that assistant: its architecture as the student, distilled by the link's method from its own teacher,
    with ``teacher.seed`` as the run seed."""
    a = cfg.teacher.assistant
    up = copy.deepcopy(cfg)
    with open_dict(up):
        up.pair.student = cfg.pair.teacher
        up.pair.teacher = a.teacher
        up.method = OmegaConf.create(OmegaConf.to_container(a.method, resolve=True))
        up.seed = int(cfg.teacher.seed)
        up.teacher.schedule = OmegaConf.create(OmegaConf.to_container(a.teacher_schedule, resolve=True))
        up.teacher.hash = a.teacher_hash
        del up.teacher["assistant"]
    return up


def assistant_origin(cfg: DictConfig) -> dict[str, Any] | None:
    """How an assistant teacher is made (its link's method and its own teacher's choice, recursively):
    part of its cache key and of every identity that depends on it; None for any other teacher."""
    if cfg.teacher.get("assistant") is None:
        return None
    up = assistant_training_config(cfg)
    top = teacher_config(up)
    choice = teacher_choice(top)
    choice.update({"arch": str(top.pair.teacher)})
    return {"method": method_spec(up.method), "teacher": choice}


def teacher_choice(cfg: DictConfig) -> dict[str, Any]:
    """How a run's teacher is chosen: a pinned cache entry, or the seed and schedule that train it."""
    if cfg.teacher.get("hash"):
        return {"hash": str(cfg.teacher.hash)}
    out = {"seed": int(cfg.teacher.seed), "schedule": schedule_spec(cfg.teacher.schedule)}
    origin = assistant_origin(cfg)
    if origin is not None:
        out["distilled"] = origin
    return out


def data_spec(data: DictConfig) -> dict[str, Any]:
    """The dataset as an experiment sees it: everything but ``data.source`` (where its files live)."""
    d = OmegaConf.to_container(data, resolve=True)
    d.pop("source", None)
    return d


def experiment_spec(cfg: DictConfig, precision: str, uses_teacher: bool | None = None) -> dict[str, Any]:
    """The experiment a run belongs to: everything that defines it except the seed. ``precision`` is the
    resolved one (``compute.device.run_precision``), so ``auto`` on two devices is two experiments."""
    if uses_teacher is None:
        from kdbench.experiment.catalog import METHODS

        uses_teacher = METHODS.get(str(cfg.method.name)).obj.uses_teacher
    return {
        "protocol": {"name": str(cfg.protocol.name), "precision": precision},
        "data": data_spec(cfg.data),
        "pair": {"name": str(cfg.pair.name), "teacher": str(cfg.pair.teacher), "student": str(cfg.pair.student)},
        "method": method_spec(cfg.method),
        "schedule": schedule_spec(cfg.schedule),
        "teacher": teacher_choice(teacher_config(cfg)) if uses_teacher else None,
    }


def method_defaults_on_pair(cfg: DictConfig) -> dict[str, Any]:
    """The method's defaults with the pair's settings for it: what a table row's label is measured
    against (``kd (temperature=1)``). Stored beside the spec in records; not part of the identity."""
    from kdbench.experiment.catalog import method_defaults

    d = method_defaults(str(cfg.method.name))
    own = (cfg.pair.get("method_overrides") or {}).get(str(cfg.method.name)) or {}
    d.update(OmegaConf.to_container(own, resolve=True) if OmegaConf.is_config(own) else dict(own))
    return d


def experiment_id(spec: dict[str, Any]) -> str:
    """16 hex digits naming one experiment (a table cell before seeds are pooled)."""
    return digest(spec)[:16]


def run_id_from(spec: dict[str, Any], seed: int) -> str:
    slug = spec["pair"]["name"].replace("/", "_")
    return f"{spec['method']['name']}__{slug}__s{seed}__{digest({'experiment': spec, 'seed': int(seed)})[:10]}"


def run_identity(cfg: DictConfig, precision: str) -> str:
    """Stable, readable run id: method, pair, seed and a hash of the experiment (seed included)."""
    return run_id_from(experiment_spec(cfg, precision), int(cfg.seed))
