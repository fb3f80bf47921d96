"""The CIFAR zoo and timm models: published sizes, feature shapes, checkpoint compatibility."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench import KDBenchError
from kdbench.models import MODELS, ModelOutput, count_parameters, create_model
from kdbench.orchestration.config import compose
from kdbench.orchestration.teacher import import_teacher
from kdbench.orchestration.teacher_cache import load_teacher
from tests.helpers import LARGE_GFLOPS, LARGE_MODELS, by_cost

CIFAR = [e.name for e in MODELS if e.meta.get("family") == "cifar"]

# Parameter counts published with the CRD benchmark (100 classes), in millions.
PUBLISHED_M = {"resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "vgg13": 9.46, "resnet56": 0.86,
               "resnet20": 0.28}


@pytest.mark.parametrize("name,millions", PUBLISHED_M.items())
def test_parameter_counts_match_the_published_ones(name, millions):
    assert round(count_parameters(create_model(name, num_classes=100)) / 1e6, 2) == millions


# The networks the survey's rows add (Gou et al. 2021, Tables 5-6; kdbench/conf/suite/survey-*.yaml): published
# sizes, in millions, each as its source prints it (rounded, or He et al.'s cut to the printed digits), for the
# class count the source counts with.
SURVEY_PUBLISHED_M = {
    # Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (CIFAR tables): WRN-16-8 11.0M, WRN-28-10 36.5M.
    ("wrn_16_8", 10): 11.0, ("wrn_28_10", 10): 36.5,
    # Zhang et al., "Deep Mutual Learning", CVPR 2018, Table 1 (CIFAR-100): MobileNet 3.3M, WRN-28-10 36.5M,
    # ResNet-32 0.46M.
    ("mobilenet", 100): 3.3, ("wrn_28_10", 100): 36.5,
    # Xie et al., "Aggregated Residual Transformations", CVPR 2017, Table 7 (CIFAR): ResNeXt-29, 8x64d 34.4M.
    ("resnext29", 10): 34.4,
}


@pytest.mark.parametrize("name,classes,millions", [(n, c, m) for (n, c), m in SURVEY_PUBLISHED_M.items()])
def test_survey_networks_have_their_published_sizes(name, classes, millions):
    assert round(count_parameters(create_model(name, num_classes=classes)) / 1e6, 1) == millions


# He et al., "Deep Residual Learning", CVPR 2016, Table 6 (CIFAR-10): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M (DML's
# Table 1 repeats ResNet-32's 0.46M). Those networks' shortcuts are parameter-free (zero-padded identity, He et
# al.'s option A); the CRD benchmark's, ours, are 1x1 conv + BN where shapes change: less those, the count rounds
# to the printed one.
HE_TABLE_6 = {"resnet20": (0.27, 2), "resnet32": (0.46, 2), "resnet44": (0.66, 2), "resnet56": (0.85, 2),
              "resnet110": (1.7, 1)}


@pytest.mark.parametrize("name,printed", HE_TABLE_6.items())
def test_cifar_resnets_have_he_et_al_sizes(name, printed):
    value, digits = printed
    m = create_model(name, num_classes=10)
    shortcuts = sum(count_parameters(mod) for n, mod in m.named_modules() if n.endswith("downsample"))
    assert shortcuts == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert round((count_parameters(m) - shortcuts) / 1e6, digits) == value


def _cifar_resnet_size(depth: int, widths: tuple[int, int, int, int], classes: int) -> int:
    """The parameter count of He et al.'s 6n+2 CIFAR ResNet with a 1x1-conv shortcut where shapes change (the
    CRD benchmark's form), counted from its definition: what the resnets no paper prints a size for must hold."""
    n, conv_bn = (depth - 2) // 6, lambda cin, cout, k: cin * cout * k * k + 2 * cout  # bias-free conv + BN
    total, cin = conv_bn(3, widths[0], 3), widths[0]
    for i, planes in enumerate(widths[1:]):
        shortcut = conv_bn(cin, planes, 1) if i > 0 or cin != planes else 0  # stride 2 after the first stage
        total += conv_bn(cin, planes, 3) + conv_bn(planes, planes, 3) + shortcut
        total += (n - 1) * 2 * conv_bn(planes, planes, 3)
        cin = planes
    return total + cin * classes + classes  # the classifier


@pytest.mark.parametrize("name,depth,widths", [
    ("resnet20", 20, (16, 16, 32, 64)), ("resnet110", 110, (16, 16, 32, 64)),
    # FSP's CIFAR-10 teacher (Yim et al. 2017; 0.37M) and IRG's student (Liu et al. 2019; 0.07M): no printed
    # size was at hand to check them against, so they are checked against the definition, as resnet20/110 are.
    ("resnet26", 26, (16, 16, 32, 64)), ("resnet20x0.5", 20, (8, 8, 16, 32))])
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_resnet_sizes_follow_from_their_definition(name, depth, widths, classes):
    assert count_parameters(create_model(name, num_classes=classes)) == _cifar_resnet_size(depth, widths, classes)


def test_the_survey_networks_split_for_one_and_give_ofd_their_batchnorms():
    """ONE runs on a trunk and its tails, OFD reads each stage's BN before its last ReLU: both work on the new
    families as on the CRD zoo's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("mobilenet", "resnext29", "resnet26", "wrn_28_10"):
        m = create_model(name, num_classes=5).eval()
        out = m(x)
        torch.testing.assert_close(m.forward_tail(m.forward_trunk(x)), out.logits)
        for f, pre in zip(out.features[1:], out.preact_features[1:]):
            if name != "wrn_28_10":  # a pre-activation WRN's stage output is not its own preact's ReLU
                torch.testing.assert_close(F.relu(pre), f)
        if hasattr(m, "bn_before_relu"):
            assert [bn.num_features for bn in m.bn_before_relu()] == [f.shape[1] for f in out.features[1:]]


def test_the_whole_crd_zoo_is_registered():
    expected = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16",
                "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet18", "resnet34", "resnet50"}
    assert expected <= set(CIFAR)


# (stem + stage channels, spatial sizes) at 32x32, as in the benchmark's is_feat outputs.
SHAPES = {
    "resnet20": ([16, 16, 32, 64], [32, 32, 16, 8], 64),
    "resnet8x4": ([32, 64, 128, 256], [32, 32, 16, 8], 256),
    "wrn_40_2": ([16, 32, 64, 128], [32, 32, 16, 8], 128),
    "vgg8": ([64, 128, 256, 512, 512], [32, 16, 8, 4, 4], 512),
    "mobilenetv2": ([16, 12, 16, 48, 160], [16, 16, 8, 4, 2], 1280),
    "shufflenetv1": ([24, 240, 480, 960], [32, 16, 8, 4], 960),
    "shufflenetv2": ([24, 116, 232, 464], [32, 16, 8, 4], 1024),
    "resnet50": ([64, 256, 512, 1024, 2048], [32, 32, 16, 8, 4], 2048),
    "resnet26": ([16, 16, 32, 64], [32, 32, 16, 8], 64),
    "resnet20x0.5": ([8, 8, 16, 32], [32, 32, 16, 8], 32),
    "wrn_16_8": ([16, 128, 256, 512], [32, 32, 16, 8], 512),
    "wrn_28_10": ([16, 160, 320, 640], [32, 32, 16, 8], 640),
    "mobilenet": ([32, 64, 128, 256, 512, 1024], [32, 32, 16, 8, 4, 2], 1024),
    "resnext29": ([64, 256, 512, 1024], [32, 32, 16, 8], 1024),
}


@pytest.mark.parametrize("name", by_cost(CIFAR))
def test_every_cifar_model_gives_the_feature_interface(name):
    m = create_model(name, num_classes=7)
    out = m(torch.randn(2, 3, 32, 32))
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 7)
    spec = m.feature_spec((3, 32, 32))
    assert [(s.channels, s.height, s.width) for s in spec.stages] == [tuple(f.shape[1:]) for f in out.features]
    assert out.embedding.shape == (2, spec.embedding_dim)
    if out.preact_features is not None:
        assert [p.shape for p in out.preact_features] == [f.shape for f in out.features]
    if name in SHAPES:
        chans, sizes, emb = SHAPES[name]
        assert [s.channels for s in spec.stages] == chans and [s.height for s in spec.stages] == sizes
        assert spec.embedding_dim == emb


# Parameter names of the benchmark's released code that community checkpoints carry.
ANCHOR_KEYS = {
    "resnet8x4": ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                  "layer3.0.downsample.1.running_mean", "fc.weight"],
    "wrn_40_2": ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                 "block3.layer.5.conv2.weight", "bn1.weight", "fc.bias"],
    "vgg13": ["block0.0.weight", "block0.0.bias", "block0.1.running_mean", "block0.3.weight", "block4.4.weight",
              "classifier.weight"],
    "mobilenetv2": ["conv1.0.weight", "conv1.1.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.bias",
                    "conv2.0.weight", "classifier.0.weight"],
    "shufflenetv1": ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
    "shufflenetv2": ["conv1.weight", "layer1.0.conv5.weight", "layer1.1.conv3.weight", "conv2.weight", "bn2.weight",
                     "linear.weight"],
    "resnet50": ["conv1.weight", "layer1.0.shortcut.0.weight", "layer4.2.conv3.weight", "linear.weight"],
}


@pytest.mark.parametrize("name,keys", ANCHOR_KEYS.items())
def test_parameter_names_follow_the_benchmark_code(name, keys):
    sd = create_model(name, num_classes=100).state_dict()
    for k in keys:
        assert k in sd, k
    assert "block1.layer.1.convShortcut.weight" not in create_model("wrn_40_2", 100).state_dict()


def test_wrn_preact_features_do_not_update_batchnorm_twice():
    m = create_model("wrn_16_2", num_classes=10).train()
    bn = m.block2.layer[0].bn1
    m(torch.randn(4, 3, 32, 32))
    assert bn.num_batches_tracked.item() == 1


def _community_checkpoint(tmp_path, arch, num_classes=100, extra=None, drop=None):
    sd = create_model(arch, num_classes=num_classes).state_dict()
    if drop:
        sd.pop(drop)
    if extra:
        sd[extra] = torch.zeros(1)
    path = tmp_path / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 240, "model": sd, "best_acc": 0.0}, path)
    return path, sd


def test_teacher_import_loads_a_community_checkpoint_strictly(tmp_path):
    path, sd = _community_checkpoint(tmp_path, "resnet8x4")
    cfg = compose([f"paths.work={tmp_path}/work", "dataset=cifar100"], check=False)
    entry = import_teacher(path, "resnet8x4", cfg, data=None)
    assert entry.meta["source"] == "imported" and entry.meta["spec"]["source_sha256"]
    assert entry.meta["num_classes"] == 100
    model = load_teacher(entry, torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("kw,message", [({"drop": "fc.weight"}, "missing keys: fc.weight"),
                                        ({"extra": "fc.extra"}, "unexpected keys: fc.extra"),
                                        ({"num_classes": 10}, "class count")])
def test_teacher_import_names_what_does_not_match(tmp_path, kw, message):
    path, _ = _community_checkpoint(tmp_path, "resnet8x4", **kw)
    cfg = compose([f"paths.work={tmp_path}/work", "dataset=cifar100"], check=False)
    with pytest.raises(KDBenchError, match=message):
        import_teacher(path, "resnet8x4", cfg, data=None)


def test_imported_teacher_is_used_by_a_run(tmp_path, make_cfg):
    from kdbench.data import load_data
    from kdbench.orchestration.runner import run

    cfg = make_cfg()
    data = load_data(cfg)
    sd = create_model("cnn_wide", num_classes=10, in_channels=1).state_dict()
    path = tmp_path / "teacher.pth"
    torch.save({"model": sd}, path)
    entry = import_teacher(path, "cnn_wide", cfg, data)
    assert entry.test_top1 is not None  # measured on our test split
    rec = run(make_cfg(f"teacher.hash={entry.hash}"), data=data)
    assert rec["teacher"]["hash"] == entry.hash
    with pytest.raises(KDBenchError, match="needs a cnn_small"):
        run(make_cfg(f"teacher.hash={entry.hash}", "pair.teacher=cnn_small", "seed=5"), data=data)


@pytest.mark.parametrize("name", ["imagenet/resnet18", "imagenet/mobilenetv1", "timm/resnet10t"])
def test_timm_models_through_the_same_interface(name):
    m = create_model(name, num_classes=5)
    out = m(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 5) and out.embedding.ndim == 2 and len(out.features) == 5
    spec = m.feature_spec((3, 64, 64))
    assert spec.stages[-1].height == 2 and spec.embedding_dim == out.embedding.shape[1]


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(KDBenchError, match="timm has no model"):
        create_model("timm/not_a_model", num_classes=5)


def test_crd_pairs_are_registered_with_their_schedules():
    from kdbench.experiment.pairs import PAIRS

    crd = list(compose(["suite=crd-cifar100"], check=False).suite.pairs)
    assert len(crd) == 13 and set(crd) <= set(PAIRS.names())
    assert {"imagenet/resnet34-resnet18", "imagenet/resnet50-mobilenetv1"} <= set(PAIRS.names())
    cfg = compose(["pair=cifar100/resnet32x4-shufflenetv2"])
    assert cfg.data.name == "cifar100" and cfg.schedule.name == "crd"
    assert cfg.schedule.lr == 0.01 and cfg.teacher.schedule.lr == 0.05  # lr 0.01 for the student only
    assert compose(["pair=cifar100/resnet56-resnet20"]).schedule.lr == 0.05


def test_a_suite_of_imported_teachers_pins_the_one_import_per_architecture(tmp_path):
    """``teachers: imported`` (the CRD suite's): every missing import named at once, the one import pinned,
    two imports of one architecture refused until a pair names its key."""
    from kdbench.orchestration.suite import load_suite

    over = [f"paths.work={tmp_path}/work", "dataset=cifar100", "suite=crd-cifar100", "pair=cifar100/resnet56-resnet20"]
    with pytest.raises(KDBenchError) as missing:
        compose(over)
    assert "no imported wrn_40_2, resnet56, resnet110, resnet32x4, vgg13, resnet50 for cifar100" in str(missing.value)
    assert "kdbench teacher import CHECKPOINT --arch resnet50 --dataset cifar100" in str(missing.value)
    cfg = compose(over[:2], check=False)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"t{seed}.pth"
        torch.save({"model": create_model("resnet56", num_classes=100).state_dict()}, path)
        paths.append(path)
    first = import_teacher(paths[0], "resnet56", cfg, data=None)
    assert compose(over).teacher.hash == first.hash
    assert compose([*over, "teacher.hash=" + first.hash]).teacher.hash == first.hash  # the command line wins
    second = import_teacher(paths[1], "resnet56", cfg, data=None)
    with pytest.raises(KDBenchError, match=f"2 imported resnet56 teachers for cifar100 .*{second.hash[:8]}"):
        compose(over)
    s = load_suite(["suite=crd-cifar100"])
    assert s.teachers == "imported" and len(s.pairs) == 13


@pytest.mark.slow
def test_the_large_models_list_is_every_network_of_2_3_gflops_or_more():
    """tests.helpers.LARGE_MODELS (run in the slow tier by every per-model test) is measured, not guessed."""
    from kdbench.models import forward_flops

    large = {n for n in CIFAR if forward_flops(create_model(n, 100), (3, 32, 32)) >= LARGE_GFLOPS * 1e9}
    assert large == LARGE_MODELS & set(CIFAR)
