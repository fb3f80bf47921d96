"""Suites: what a suite expands to (pairs x methods x seeds, less the cells its ``exclude`` drops and outside the
cells its ``only`` keeps; each run's config composed), the networks each run distils from, and the state of each
run in the store."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdbench.core.errors import KDBenchError
from kdbench.core.overrides import override_key, override_value
from kdbench.experiment.identity import teacher_config
from kdbench.experiment.schema import VANILLA
from kdbench.orchestration.config import compose

log = logging.getLogger(__name__)


def load_suite(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """The suite named on the command line (``suite=NAME``, ``suite.KEY=...``), default ``digits``."""
    from kdbench.experiment.identity import SEED

    own = [o for o in overrides if override_key(o).split(".", 1)[0] == "suite"]
    s = compose(own, check=False).suite
    for key in ("pairs", "methods", "seeds"):
        if not OmegaConf.is_list(s.get(key)) or not len(s[key]):
            raise KDBenchError(f"suite.{key} must be a non-empty list (suite {s.get('name')!r})")
    s.seeds = [SEED(x, "suite.seeds[]") for x in s.seeds]
    check_cells(s)
    return s


# The keys that pick a suite's cells out of pairs x methods, each a mapping {METHOD: [PAIR, ...]}: ``exclude``
# drops those cells (a method that cannot serve a pair), ``only`` runs each method it names on those pairs and
# no other (a table that is a list of (method, pair) cells, like the survey's). A method named in neither runs
# on every pair; one named in a key but not among the suite's methods is not run (``suite.methods=[...]`` on the
# command line may narrow a suite).
CELL_KEYS = ("exclude", "only")


def check_cells(s: DictConfig) -> None:
    """Refuse an ``exclude`` or ``only`` that is not a mapping of registered methods to lists of registered
    pairs (``only``'s non-empty): a misspelt name would silently run or drop cells."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.pairs import PAIRS

    for key in CELL_KEYS:
        node = s.get(key)
        if node is None:
            continue
        if not OmegaConf.is_dict(node):
            raise KDBenchError(f"suite.{key} must be a mapping {{METHOD: [PAIR, ...]}} (suite {s.get('name')!r})")
        for method, pairs in node.items():
            if str(method) not in METHODS:
                raise KDBenchError(f"suite.{key} (suite {s.get('name')!r}): {METHODS.unknown_message(str(method))}")
            if not OmegaConf.is_list(pairs) or (key == "only" and not len(pairs)):
                raise KDBenchError(f"suite.{key}.{method} must be a {'non-empty ' if key == 'only' else ''}list of "
                                   f"pairs (suite {s.get('name')!r})")
            for pair in pairs:
                if str(pair) not in PAIRS:
                    raise KDBenchError(f"suite.{key}.{method} (suite {s.get('name')!r}): "
                                       f"{PAIRS.unknown_message(str(pair))}")


def in_suite(s: DictConfig, method: str, pair: str) -> bool:
    """Whether the cell (method, pair) of pairs x methods is one of the suite's (:data:`CELL_KEYS`)."""
    only, exclude = s.get("only") or {}, s.get("exclude") or {}
    if method in only and pair not in [str(p) for p in only[method]]:
        return False  # the method runs on the pairs `only` names, and no other
    return pair not in [str(p) for p in exclude.get(method) or []]  # a method that cannot serve the pair


def suite_runs(s: DictConfig, overrides: list[str] | tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(pair, overrides) for every run of the suite, in order: pair, then seed, then method; only the
    cells :func:`in_suite` keeps (``exclude`` and ``only``).

    The suite's own overrides come first, so the command line wins over them.
    """
    out = []
    for pair in s.pairs:
        for seed in s.seeds:
            for method in s.methods:
                if not in_suite(s, str(method), str(pair)):
                    continue
                # Suites resume interrupted runs from their checkpoints (the command line may say otherwise).
                out.append((str(pair), [*s.overrides, f"pair={pair}", "resume=true", *overrides,
                                        f"method={method}", f"seed={seed}"]))
    return out


@dataclass
class SuiteConfigs:
    suite: DictConfig
    runs: list[tuple[str, list[str]]]  # (pair, overrides), as :func:`suite_runs`
    cfgs: list[DictConfig]  # each run's config, in the same order


def suite_configs(overrides: list[str] | tuple[str, ...]) -> SuiteConfigs:
    """The suite's runs, every one composed (a bad name anywhere fails before anything runs). Runs that
    differ only in their seed are composed once and copied with the seed set -- no other key derives from
    it -- since a suite composes hundreds of runs and each Hydra composition is slow."""
    import copy

    s = load_suite(overrides)
    runs = suite_runs(s, overrides)
    if not runs:
        raise KDBenchError(f"suite {s.get('name')!r} has no run: its exclude/only leave no cell of "
                           f"{list(s.pairs)} x {list(s.methods)}")
    # A pair none of whose cells is kept (the methods narrowed on the command line) is no part of the suite:
    # benches and launchers go pair by pair and start with the pair's teacher.
    kept = {pair for pair, _ in runs}
    s.pairs = [p for p in s.pairs if str(p) in kept]
    memo: dict[tuple[str, ...], DictConfig] = {}
    cfgs = []
    for _, ov in runs:
        key = tuple(ov[:-1])  # suite_runs puts the seed last
        if key not in memo:
            memo[key] = compose(ov)
            cfgs.append(memo[key])
            continue
        cfg = copy.deepcopy(memo[key])
        cfg.seed = int(override_value(ov[-1]))
        cfgs.append(cfg)
    return SuiteConfigs(s, runs, cfgs)


def distils_from(cfg: DictConfig) -> list[DictConfig]:
    """The networks a run distils from, root first: configs whose :func:`~kdbench.orchestration.teacher.ensure_teacher`
    yields each one. One entry for a pair teacher or a student copy; a TAKD chain lists every assistant after
    the network it learns from. Empty for a method without a teacher."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.identity import assistant_training_config

    if not METHODS.get(str(cfg.method.name)).obj.uses_teacher:
        return []

    def chain(c: DictConfig) -> list[DictConfig]:
        t = teacher_config(c)
        return [c] if t.teacher.get("assistant") is None else [*chain(assistant_training_config(t)), c]

    return chain(cfg)


def pair_teacher_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` as a method that distils from the pair's own teacher would see it (the teacher a table
    reports), whatever network ``cfg``'s method distils from."""
    import copy

    from omegaconf import open_dict

    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.method = OmegaConf.create({"name": VANILLA})
    return out


STATE_NOTES = {
    "other-teacher": "completed only with a teacher whose weights differ from the cached one: not done for this "
                     "teacher (bench re-runs it)",
    "teacher-unknown": "completed, but the teacher is not in this cache: a bench would train it and re-run the "
                       "student unless the new weights are the same",
}


def _teacher_sha(cfg: DictConfig) -> str | None:
    """The weights sha256 of the teacher ``cfg`` would use, if it is in the cache (nothing is trained)."""
    from kdbench.orchestration.teacher_cache import find_teacher

    try:
        entry = find_teacher(cfg)
    except KDBenchError:  # a pinned teacher that is not cached
        return None
    return None if entry is None else entry.meta["weights"]["sha256"]


def run_state(cfg: DictConfig) -> tuple[str, dict[str, Any] | None]:
    """(state, last record): done | other-teacher | teacher-unknown | failed | diverged | running |
    interrupted | missing. A run that uses a teacher is done only for the teacher it was distilled from."""
    from kdbench.core.locks import is_locked
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.results import completed_records, records_of_run
    from kdbench.orchestration.runner import RunPaths

    paths = RunPaths.of(cfg)
    recs = records_of_run(cfg.paths.results, paths.run_id)
    done = completed_records(recs)
    if done and METHODS.get(str(cfg.method.name)).obj.uses_teacher:
        sha = _teacher_sha(cfg)
        if sha is None:
            return "teacher-unknown", done[-1]
        mine = [r for r in done if (r.get("teacher") or {}).get("weights_sha256") == sha]
        if not mine:
            return "other-teacher", done[-1]
        done = mine
    if done:
        return "done", done[-1]
    if is_locked(paths.lock):
        return "running", None
    if recs:
        return recs[-1]["status"], recs[-1]
    if paths.checkpoint.exists():
        return "interrupted", None
    return "missing", None
