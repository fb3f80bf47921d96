"""Registries and config composition."""
from __future__ import annotations

from importlib import resources

import pytest

from kdbench import KDBenchError
from kdbench.data import DATASETS
from kdbench.experiment.identity import milestone_epochs
from kdbench.experiment.pairs import PAIRS
from kdbench.method import METHODS
from kdbench.models import MODELS
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run_identity


def test_default_config_composes_the_default_benchmark():
    cfg = compose()
    assert cfg.data.name == "digits" and cfg.pair.name == "digits/cnn_wide-cnn_small"
    assert cfg.method.name == "kd" and cfg.method.temperature == 4.0
    assert cfg.method.ce_weight == 0.1 and cfg.method.kd_weight == 0.9
    assert cfg.data.val_fraction == 0.1


def test_crd_schedule_matches_the_benchmark():
    s = compose(["schedule=crd"]).schedule
    assert (s.epochs, s.batch_size, s.lr, s.momentum, s.weight_decay) == (240, 64, 0.05, 0.9, 5e-4)
    assert milestone_epochs(s) == [150, 180, 210] and s.gamma == 0.1 and s.lr_schedule == "multistep"
    c = compose(["schedule=cosine"]).schedule
    assert c.lr_schedule == "cosine" and c.epochs == 240


def test_overrides_reach_the_config():
    cfg = compose(["method=vanilla", "seed=3", "schedule.epochs=5", "data.val_fraction=0.2"])
    assert (cfg.method.name, cfg.seed, cfg.schedule.epochs, cfg.data.val_fraction) == ("vanilla", 3, 5, 0.2)
    # the teacher's schedule is its own: a student override does not retrain the teacher
    assert cfg.teacher.schedule.epochs == compose().teacher.schedule.epochs


@pytest.mark.slow
def test_every_registered_method_composes_from_its_class_defaults():
    from kdbench.method import method_defaults

    assert not (resources.files("kdbench.conf") / "method").is_dir()  # defaults live beside the classes only
    for name in METHODS.names():
        cfg = compose([f"method={name}"], check=False)  # the digits pair: its method_overrides apply on top
        own = dict(cfg.pair.method_overrides.get(name) or {})
        assert dict(cfg.method) == {**method_defaults(name), **own}
        cifar = compose([f"method={name}", "pair=cifar100/resnet32x4-resnet8x4", "dataset=cifar100"])
        own = dict(cifar.pair.method_overrides.get(name) or {})
        assert dict(cifar.method) == {**method_defaults(name), **own}
        # the authors' tuned weights only (CAT-KD's three per-pair settings); TAKD's assistant is the pair's
        assert set(own) <= {"reviewkd": {"beta"}, "takd": {"assistants"},
                            "cat-kd": {"beta", "cam_resolution", "normalize"}}.get(name, set())


@pytest.mark.parametrize("registry", [METHODS, MODELS, DATASETS, PAIRS])
def test_registries_have_descriptions(registry):
    assert registry.names()
    for entry in registry:
        assert entry.description, f"{registry.kind} {entry.name} has no description"


def test_methods_carry_category_and_scheme():
    meta = METHODS.get("kd").meta
    assert (meta["category"], meta["scheme"]) == ("response", "offline")


@pytest.mark.parametrize("registry,name", [(METHODS, "kdd"), (MODELS, "resnet9000"), (DATASETS, "mnist"),
                                           (PAIRS, "digits/nope")])
def test_unknown_names_list_valid_choices(registry, name):
    with pytest.raises(KDBenchError) as err:
        registry.get(name)
    for valid in registry.names():
        assert valid in str(err.value)


@pytest.mark.parametrize("override,listed", [("method=kdd", ["kd", "vanilla", "crd", "dml"]),
                                             ("dataset=mnist", ["digits"]),
                                             ("pair=digits/nope", ["cnn_wide-cnn_small"]),
                                             ("schedule=fast", ["crd", "cosine", "digits"])])
def test_unknown_group_options_list_valid_choices(override, listed):
    with pytest.raises(KDBenchError) as err:
        compose([override])
    for valid in listed:
        assert valid in str(err.value)


def test_unknown_model_in_a_pair_lists_models():
    with pytest.raises(KDBenchError, match="cnn_small"):
        compose(["pair.student=cnn_tiny"])


def test_malformed_override_gives_hydras_message():
    with pytest.raises(KDBenchError, match="Error parsing override"):
        compose(["seed=="])


def test_pair_dataset_mismatch_is_an_error():
    with pytest.raises(KDBenchError, match="defined for dataset"):
        compose(["dataset=imagefolder"])


def test_run_identity_ignores_paths_but_not_semantics():
    a = compose(["paths.results=/x", "engine.progress=false"])
    b = compose(["paths.results=/y"])
    assert run_identity(a) == run_identity(b)
    assert run_identity(a) != run_identity(compose(["seed=1"]))
    assert run_identity(a) != run_identity(compose(["method.temperature=2"]))


def test_suite_method_overrides_apply_under_the_command_line():
    base = ["suite=cifar10-mini", "pair=cifar10/resnet56-resnet20", "dataset=cifar10-jpg"]
    assert compose([*base, "method=crd"]).method.nce_k == 2048
    assert compose([*base, "method=crd+kd"]).method.nce_k == 2048
    assert compose([*base, "method=crd", "method.nce_k=512"]).method.nce_k == 512
    assert compose(["pair=cifar10/resnet56-resnet20", "method=crd"]).method.nce_k == 16384


@pytest.mark.parametrize("override,hint", [("+schedule.epoch=1", "schedule.epochs"),
                                           ("+data.val_fracton=0.2", "data.val_fraction"),
                                           ("+engine.devce=cpu", "engine.device"),
                                           ("+method.temprature=2", "method.temperature")])
def test_a_misspelt_added_key_is_refused_with_the_right_name(override, hint):
    with pytest.raises(KDBenchError, match=f"did you mean {hint}"):
        compose([override])


def test_a_pair_naming_an_unknown_model_names_its_file():
    with pytest.raises(KDBenchError, match=r"conf/pair/digits/cnn_wide-cnn_small.yaml\) names teacher 'resnet9'"):
        compose(["pair.teacher=resnet9"])


def test_bad_suite_seeds_are_a_clear_error():
    from kdbench.orchestration.suite import load_suite

    with pytest.raises(KDBenchError, match="suite.seeds"):
        load_suite(["suite.seeds=[a]"])


@pytest.mark.parametrize("overrides", [
    [],
    ["method=kd", "seed=3", "paths.work=/w", "schedule.epochs=7", "schedule.milestones=[0.5]"],
    ["pair=cifar100/resnet32x4-resnet8x4", "dataset=cifar100", "method=crd", "method.nce_k=64", "paths.results=/r"],
    ["suite=crd-cifar100", "suite.seeds=[0,1]", "schedule@teacher.schedule=cosine", "teacher.schedule.epochs=3"],
    ["method=kd", "+pair.method_overrides.kd.temperature=2", "note=hello", "engine.threads=1", "resume=true"],
    ["protocol=paper", "data.val_fraction=0.0", "paths.data=/d", "+data.source.archive=/a.tar.gz"],
])
def test_a_kept_tree_composes_exactly_what_hydra_composes(overrides):
    """compose keeps Hydra's merged tree per config-choosing overrides and applies plain values to a copy: the
    result must equal Hydra composing every override itself."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from kdbench.orchestration.config import CONFIG_MODULE, finalize

    for _ in range(2):  # the second time from the kept tree
        ours = compose(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        theirs = hydra_compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    OmegaConf.resolve(theirs)
    theirs = finalize(theirs, overrides)
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(theirs)


def test_a_kept_tree_is_never_changed_by_what_a_caller_does_with_its_config():
    a = compose(["method=kd"])
    a.method.temperature = 99.0
    a.schedule.epochs = 1
    b = compose(["method=kd"])
    assert b.method.temperature != 99.0 and b.schedule.epochs != 1
