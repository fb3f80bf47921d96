"""The command line: ``kdbench COMMAND ...``, as argparse sees it."""
from __future__ import annotations

import argparse

from kdbench import __version__

LISTABLE = ("methods", "models", "datasets", "pairs")


def build_parser() -> argparse.ArgumentParser:
    """Every command, its arguments and its help text."""
    p = argparse.ArgumentParser(prog="kdbench", description="Benchmark knowledge-distillation methods.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    p.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list registered methods, models, datasets or pairs")
    ls.add_argument("what", choices=LISTABLE)

    show = sub.add_parser("show", help="print a method's card and its extra trainable parameters on a pair")
    show.add_argument("what", choices=("method",))
    show.add_argument("name")
    show.add_argument("overrides", nargs="*", help="e.g. pair=cifar100/resnet32x4-resnet8x4")

    for name, text in (("run", "train one student (method x pair x seed) and write its record"),
                       ("bench", "run a suite (default: digits; teacher, vanilla, KD x 3 seeds) and print tables"),
                       ("plan", "print the runs a suite would do, with estimated FLOPs and time"),
                       ("speed", "measure training-step throughput, FLOPs and MFU beside a reference loop"),
                       ("status", "show each run of a suite: done, running, failed, diverged, interrupted, missing"),
                       ("config", "print the resolved config")):
        sp = sub.add_parser(name, help=text)
        if name == "plan":
            sp.add_argument("--gflops", type=float, default=None,
                            help="training throughput (GFLOP/s) to estimate unmeasured runs and teachers with "
                                 "(default: the median of this store's records)")
        sp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=kd seed=1 schedule.epochs=5")

    _results_parser(sub)
    _output_parsers(sub)
    _teacher_parser(sub)
    _doctor_parser(sub)
    return p


def _results_parser(sub) -> None:
    """``kdbench results validate|export|import|migrate``."""
    results = sub.add_parser("results", help="the results store: validate, export, import")
    rsub = results.add_subparsers(dest="results_command", required=True, metavar="ACTION")
    rv = rsub.add_parser("validate", help="check every record; name each bad file and field")
    rv.add_argument("overrides", nargs="*")
    rx = rsub.add_parser("export", help="write a bundle of records (with configs and environments)")
    rx.add_argument("bundle", help="output .tar.gz")
    rx.add_argument("overrides", nargs="*")
    ri = rsub.add_parser("import", help="validate a bundle and add its records")
    ri.add_argument("bundle")
    ri.add_argument("overrides", nargs="*")
    rm = rsub.add_parser("migrate", help="upgrade records written by an older kdbench to the current schema")
    rm.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    rm.add_argument("overrides", nargs="*")


def _output_parsers(sub) -> None:
    """``kdbench eval`` and ``kdbench leaderboard``."""
    ev = sub.add_parser("eval", help="evaluate a run's kept student (by run id) or a model file on a dataset split")
    ev.add_argument("target", help="a run id (or a unique prefix), or a .pt file: a kept student or a state dict")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test")
    ev.add_argument("--arch", default=None, help="the architecture of a plain state dict, e.g. resnet20")
    ev.add_argument("--out", default=None, help="also write the metrics as JSON to this file")
    ev.add_argument("overrides", nargs="*", help="for a file: dataset=... (and pair=...); for a run: e.g. the "
                                                 "data's location data.source.archive=...")

    lb = sub.add_parser("leaderboard", help="write leaderboard/ (tables, page, plots, CSV) from results/")
    lb.add_argument("--check", action="store_true",
                    help="exit non-zero if a record is invalid or leaderboard/ is stale")
    lb.add_argument("--out", default="leaderboard", help="output folder (default: leaderboard)")
    lb.add_argument("--metric", choices=("last", "selected"), default="last",
                    help="test accuracy at the last epoch (default, as the CRD benchmark) or at the "
                         "validation-selected epoch")
    lb.add_argument("--compare-short", action="store_true",
                    help="also compare runs on shorter schedules than the papers' with the papers' numbers (labelled)")
    lb.add_argument("--against", metavar="METHOD", default=None,
                    help="mark each benchmark cell ↑/↓ against this method on the same pair and teacher, as the CRD "
                         "table does against KD (--against kd)")
    lb.add_argument("overrides", nargs="*")


def _doctor_parser(sub) -> None:
    """``kdbench doctor [--clean]``."""
    dr = sub.add_parser("doctor", help="list what kills left in the store and work folder that no record explains")
    dr.add_argument("--clean", action="store_true", help="remove the leftovers that are provably unused")
    dr.add_argument("overrides", nargs="*")


def _teacher_parser(sub) -> None:
    """``kdbench teacher train|list|import|show``."""
    teacher = sub.add_parser("teacher", help="the teacher cache: train, list, show")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    tt = tsub.add_parser("train", help="train (or find) the teacher of the configured pair")
    tt.add_argument("overrides", nargs="*")
    tl = tsub.add_parser("list", help="list cached teachers")
    tl.add_argument("overrides", nargs="*")
    ti = tsub.add_parser("import",
                         help="add a published checkpoint (e.g. a CRD-benchmark CIFAR-100 teacher) to the cache")
    ti.add_argument("path")
    ti.add_argument("--arch", required=True, help="registered model name, e.g. resnet32x4")
    ti.add_argument("--dataset", required=True, help="dataset the checkpoint was trained on, e.g. cifar100")
    ti.add_argument("--no-eval", action="store_true", help="do not measure its test accuracy here")
    ti.add_argument("overrides", nargs="*")
    ts = tsub.add_parser("show", help="print a cached teacher's provenance")
    ts.add_argument("hash", help="hash or unique prefix (see `kdbench teacher list`)")
    ts.add_argument("overrides", nargs="*")
