"""Config composition (Hydra) and the pair registry, which is the pair/ config group.

Commands compose the same config tree with Hydra's compose API; Hydra's own
messages for malformed overrides and unknown group options are re-raised as
:class:`KDBenchError` so the CLI shows them without a traceback.
"""
from __future__ import annotations

import collections
import copy

from omegaconf import DictConfig, OmegaConf

from kdbench.core.errors import KDBenchError
from kdbench.core.overrides import given_keys, override_key
from kdbench.experiment.identity import DATA_SOURCE_KEYS
from kdbench.experiment.pairs import CONFIG_MODULE, PAIRS

# Keys that moved: the old spelling gets a message naming the new one (Hydra would only say "not in struct").
MOVED_KEYS = {
    "engine.amp": "protocol.precision (precision is part of the experiment: auto | fp32 | bf16)",
    **{f"data.{k}": f"data.source.{k}" for k in DATA_SOURCE_KEYS},
}


def compose(overrides: list[str] | tuple[str, ...] = (), check: bool = True) -> DictConfig:
    """The resolved root config with ``overrides`` applied (Hydra override grammar).

    ``check=False`` skips the cross-group checks (for commands that use only
    part of the config, such as importing a teacher for a dataset).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from kdbench.training.method import register_method_configs

    check_names(overrides)
    check_moved(overrides)
    register_method_configs()
    structural, values = _split_overrides(overrides)
    key = (tuple(structural), _method_configs_digest())
    try:
        tree = _COMPOSED.get(key)
        if tree is None:
            GlobalHydra.instance().clear()
            try:
                with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
                    tree = hydra_compose("config", overrides=list(structural))
            finally:
                GlobalHydra.instance().clear()
            _COMPOSED[key] = tree
            while len(_COMPOSED) > 256:
                _COMPOSED.popitem(last=False)
        else:
            _COMPOSED.move_to_end(key)
        cfg = copy.deepcopy(tree)
        _apply_values(values, cfg)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).split("\nConfig search path:")[0].strip()
        raise KDBenchError(f"invalid config or override: {msg}") from None
    return finalize(cfg, overrides, check)


# Hydra reads and merges some 60 YAML files per composition (about 0.3 s); a suite composes one config per run,
# the tests thousands. The merged tree depends only on the overrides that choose config files (groups,
# additions, deletions), the package's files and the registered methods' defaults; it is kept per those, and the
# overrides of plain values are applied to a copy as Hydra itself applies them, after the merge.
# tests/test_config.py::test_a_kept_tree_composes_exactly_what_hydra_composes holds the two paths equal.
_COMPOSED: collections.OrderedDict[tuple, DictConfig] = collections.OrderedDict()


def _split_overrides(overrides) -> tuple[list[str], list]:
    """(overrides that choose or change the tree, parsed overrides of plain values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        ConfigLoaderImpl._apply_overrides_to_config  # noqa: B018 -- Hydra 1.3's; without it Hydra does everything
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # another Hydra, or a syntax error Hydra's own composition reports
        return list(overrides), []
    structural, values = [], []
    for line, o in zip(overrides, parsed):
        key = o.key_or_group
        plain = (o.type == OverrideType.CHANGE and o.package is None and not o.is_sweep_override()
                 and not key.startswith("hydra") and ("." in key or key in _TOP_VALUES))
        if plain:
            values.append(o)
        else:
            structural.append(line)
    return structural, values


# Top-level keys that hold a value (every other undotted key names a config group: method=kd, pair=...).
_TOP_VALUES = ("seed", "resume", "force", "retry_failed", "note")


def _apply_values(values: list, cfg: DictConfig) -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    if values:
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)


def _method_configs_digest() -> str:
    from kdbench.core.hashing import digest
    from kdbench.experiment.catalog import METHODS, method_defaults

    return digest({entry.name: method_defaults(entry.name) for entry in METHODS})


def finalize(cfg: DictConfig, overrides, check: bool = True) -> DictConfig:
    """What every composed config goes through (compose API and Hydra's own entry point alike):
    per-pair and per-suite settings applied, then every experiment and runtime value typed and range-checked."""
    from kdbench.experiment.identity import type_config
    from kdbench.experiment.values import type_runtime

    check_additions(cfg, overrides)
    _apply_pair_method_overrides(cfg, overrides)
    _apply_teacher_choice(cfg, overrides)
    type_config(cfg)
    type_runtime(cfg)
    check_paths(cfg)
    if check:
        check_config(cfg)
    return cfg


STORE_PATHS = ("results", "work", "runs", "teachers", "models")


def check_paths(cfg: DictConfig) -> None:
    """Every folder kdbench writes must be a folder, or not exist yet: a results store that is a file was
    found only when the first record was written, after the training (hostile round 2). Creates nothing."""
    from pathlib import Path

    for key in STORE_PATHS:
        value = (cfg.get("paths") or {}).get(key)
        if value is None:
            continue
        path = Path(str(value))
        for p in (path, *path.parents):
            if p.exists():
                if not p.is_dir():
                    where = "is" if p == path else f"lies under {p}, which is"
                    raise KDBenchError(f"paths.{key}={path} {where} a file, not a folder: give paths.{key} a "
                                       "folder (new or existing)")
                break


# Where `+key=value` may add a key that the config files do not have; anywhere else it is a typo
# (`+schedule.epoch=1`, which Hydra's own hint suggests for `schedule.epoch=1`, used to be ignored).
EXTENSIBLE = ("pair.method_overrides.", "suite.", "data.source.", "hydra.")


def check_additions(cfg: DictConfig, overrides) -> None:
    import difflib

    for o in overrides:
        if not o.startswith("+") or o.startswith("++"):
            continue
        key = override_key(o)
        if "/" in key or "@" in key or key.startswith(EXTENSIBLE):
            continue  # a config group option (`+hydra/launcher=...`) or an open-ended node
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = [k for k in (node.keys() if isinstance(node, DictConfig) else []) if k != leaf]
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else \
            (f"; {parent or 'the config'} has: {', '.join(sorted(known))}" if known else "")
        raise KDBenchError(f"{key} is not a config key (a `+` override adds a new key, so a misspelt one would be "
                           f"silently ignored){hint}")


def check_moved(overrides) -> None:
    for o in overrides:
        key = override_key(o)
        if key in MOVED_KEYS:
            raise KDBenchError(f"{key} is now {MOVED_KEYS[key]}")


def _apply_teacher_choice(cfg: DictConfig, overrides) -> None:
    """A teacher pinned for this pair (``pair.teacher_hash``, or the suite's ``teachers: {pair: hash}``; with
    ``teachers: imported`` the one imported checkpoint of the pair's teacher architecture and dataset),
    unless ``teacher.hash`` is given on the command line. Only runs on that pair see it."""
    if "teacher.hash" in given_keys(overrides):
        return
    suite = cfg.get("suite") or {}
    teachers = suite.get("teachers") or {}
    if isinstance(teachers, str) and str(cfg.pair.name) in (suite.get("pairs") or []):
        if teachers != "imported":
            raise KDBenchError(f"suite.teachers={teachers!r} is not one of: imported, a mapping {{PAIR: HASH}}")
        from kdbench.orchestration.teacher_cache import imported_teacher

        cfg.teacher.hash = imported_teacher(cfg)
        return
    pinned = (teachers.get(str(cfg.pair.name)) if not isinstance(teachers, str) else None) or \
        cfg.pair.get("teacher_hash")
    if pinned:
        cfg.teacher.hash = str(pinned)


def check_names(overrides) -> None:
    """Validate method/pair/dataset names -- every value of a sweep too -- before anything runs.

    Hydra lists valid options only for flat groups and only when a job
    composes, i.e. after earlier jobs of a sweep have run.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from kdbench.data import DATASETS
    from kdbench.experiment.catalog import METHODS

    registries = {"method": METHODS, "pair": PAIRS, "dataset": DATASETS}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise KDBenchError(f"invalid config or override: {exc}") from None
    for ov in parsed:
        key = ov.key_or_group
        if key not in registries or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        for v in values:
            registries[key].get(v)


def _apply_pair_method_overrides(cfg: DictConfig, overrides) -> None:
    """Per-pair hyper-parameters (``pair.method_overrides.<method>``) under the command line.

    Hydra cannot make a pair's value depend on the chosen method, so the pair
    file lists them and they are applied here; a ``method.KEY=`` override on
    the command line still wins.
    """
    per_method = dict((cfg.pair.get("method_overrides") or {}).get(cfg.method.name) or {})
    # A suite may set its own (after the pair's): e.g. CRD's K on a reduced training set.
    suite = cfg.get("suite") or {}
    per_method.update((suite.get("method_overrides") or {}).get(cfg.method.name) or {})
    if not per_method:
        return
    given = given_keys(overrides)
    for key, value in per_method.items():
        if f"method.{key}" not in given:
            if key not in cfg.method:
                raise KDBenchError(f"pair {cfg.pair.name} or suite overrides method.{key}, which "
                                   f"{cfg.method.name} does not have")
            cfg.method[key] = value


def check_config(cfg: DictConfig) -> None:
    """Cross-group consistency Hydra cannot express."""
    from kdbench.data import DATASETS
    from kdbench.experiment.catalog import METHODS
    from kdbench.models import check_model_name

    METHODS.get(cfg.method.name)
    DATASETS.get(cfg.data.name)
    check_engine(cfg)
    for role in ("teacher", "student"):
        try:
            check_model_name(cfg.pair[role])
        except KDBenchError as exc:
            raise KDBenchError(f"pair {cfg.pair.name} (kdbench/conf/pair/{cfg.pair.name}.yaml) names {role} "
                               f"{cfg.pair[role]!r}: {exc}") from None
    if cfg.data.name not in cfg.pair.datasets:
        raise KDBenchError(f"pair {cfg.pair.name!r} is defined for dataset(s) {list(cfg.pair.datasets)}, "
                           f"not {cfg.data.name!r}: add dataset={cfg.pair.datasets[0]}")


def check_engine(cfg: DictConfig) -> None:
    """Every engine switch resolves (the same checks as at training time, for any device), so a bad
    value is refused at composition, before data loads or a teacher trains."""
    import torch

    from kdbench.training.fastpath import resolve_fast_path

    device = str(cfg.engine.device)
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise KDBenchError(f"engine.device={device!r} is not a device: auto, cpu, cuda or cuda:N") from None
    resolve_fast_path(cfg.engine, torch.device("cpu"), str(cfg.protocol.precision))
    from kdbench.training.tracking import TRACKERS

    for name in cfg.engine.get("track") or []:  # a tracker's name, not its construction (that opens its files)
        TRACKERS.get(str(name))
