"""Command line: ``kdbench COMMAND [ARGS] [HYDRA_OVERRIDES...]``.

The CLI prints; the library logs. User mistakes (:class:`KDBenchError`) are
shown as one message with exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from kdbench.cli.parser import build_parser
from kdbench.core.errors import KDBenchError


def _list(what: str) -> str:
    from kdbench.data import DATASETS
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.pairs import PAIRS
    from kdbench.models import MODELS

    reg = {"methods": METHODS, "models": MODELS, "datasets": DATASETS, "pairs": PAIRS}[what]
    entries = list(reg)
    width = max((len(e.name) for e in entries), default=0)
    lines = []
    for e in entries:
        if what == "methods":
            extra = f"[{e.meta['category']}, {e.meta['scheme']}] "
        elif what == "pairs":
            extra = f"[{e.meta['teacher']} -> {e.meta['student']}; {', '.join(e.meta['datasets'])}] "
        else:
            extra = ""
        lines.append(f"{e.name:<{width}}  {extra}{e.description}")
    return "\n".join(lines)


def _extra_parameters(cfg) -> int:
    """Build the method on the configured pair (random weights, no data) and count its helpers."""
    from kdbench.data import DatasetInfo, static_shape
    from kdbench.experiment.catalog import METHODS
    from kdbench.models import seeded_model
    from kdbench.training.method import build_method

    known = static_shape(cfg.data)
    if known is None:
        raise KDBenchError(f"dataset {cfg.data.name!r} has no static shape; pick a pair on a registered data set")
    import torch

    from kdbench.experiment.identity import teacher_config

    classes, shape = known
    info = DatasetInfo(cfg.data.name, classes, shape, 1000)
    student = seeded_model(cfg.pair.student, classes, shape[0], 0)
    uses_teacher = METHODS.get(cfg.method.name).obj.uses_teacher
    t_arch = str(teacher_config(cfg).pair.teacher)
    teacher = seeded_model(t_arch, classes, shape[0], 0, "teacher-init") if uses_teacher else None
    return build_method(cfg.method, student, info, 0, teacher=teacher, student_arch=str(cfg.pair.student),
                        teacher_arch=t_arch, train_labels=torch.arange(1000) % classes
                        ).extra_trainable_parameters()


def _teacher_line(t) -> str:
    acc = f"{t.test_top1:6.2f}" if t.test_top1 is not None else "   n/a"
    spec = t.meta["spec"]
    if t.meta["source"] == "imported":
        origin = f"imported from {spec['imported_from']}"
    else:
        origin = f"seed {spec['seed']}  {spec['schedule']['epochs']:>4} ep"
        if t.meta["source"] == "distilled":  # a TAKD assistant: by which method, from which teacher
            origin += f"  distilled ({t.meta['distilled_from']['method']}) from {t.meta['distilled_from']['teacher']}"
    return f"{t.hash}  {t.arch:<14} {t.meta['dataset']:<12} {origin}  test top-1 {acc}  {t.meta['created']}"


def _cmd_list(args: argparse.Namespace) -> int:
    print(_list(args.what))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from kdbench.experiment.catalog import METHODS
    from kdbench.orchestration.config import compose

    entry = METHODS.get(args.name)
    print(entry.obj.card())
    refs = "".join(f"; {k}: {entry.meta[k]}" for k in ("paper", "code") if entry.meta.get(k))
    print(f"\nShown in tables as {entry.meta.get('display') or entry.name!r}{refs}")
    cfg = compose([f"method={args.name}", *args.overrides])
    print(f"\nExtra trainable parameters on {cfg.pair.name}: {_extra_parameters(cfg):,}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from kdbench.orchestration.config import compose

    print(OmegaConf.to_yaml(compose(args.overrides)), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kdbench.compute.distributed import is_main, shutdown
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.runner import run

    rec = run(compose(args.overrides))
    main_rank = is_main()
    shutdown()  # under torchrun: leave the process group together (a no-op otherwise)
    if not main_rank:
        return 0  # under torchrun, rank 0 reports
    m = rec["metrics"]
    last, sel = m["last"][m["primary_model"]]["test"], m["selected"]
    sel_txt = (f"; at the validation-selected epoch {sel['epoch']}: {sel[m['primary_model']]['test']['top1']:.2f}"
               if sel else "")
    print(f"{rec['run_id']}: test top-1 {last['top1']:.2f}, top-5 {last['top5']:.2f} at the last epoch{sel_txt}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from kdbench.orchestration.bench import format_bench, run_bench
    from kdbench.orchestration.launch import launch_suite, wants_launcher

    print(format_bench(launch_suite(args.overrides) if wants_launcher(args.overrides) else run_bench(args.overrides)))
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    from kdbench.experiment.records import write_json_atomic
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.speed import format_speed, run_speed, speed_record_name

    rows = run_speed(args.overrides)
    cfg = compose(args.overrides, check=False)
    for r in rows:
        write_json_atomic(Path(cfg.paths.results) / "speed" / speed_record_name(r), r, overwrite=False)
    print(format_speed(rows))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from kdbench.orchestration.plan import format_plan, measured_throughput, plan_rows, plan_teachers
    from kdbench.orchestration.suite import suite_configs

    if args.command == "plan" and args.gflops is not None and args.gflops <= 0:
        raise KDBenchError(f"--gflops must be positive, got {args.gflops}")
    suite = suite_configs(args.overrides)
    if args.command != "plan":  # status: states only
        print(format_plan(plan_rows(args.overrides, suite=suite), with_estimates=False))
        return 0
    if args.gflops is not None:
        rate, where = args.gflops * 1e9, "given"
    else:
        rate, n = measured_throughput(suite.cfgs[0].paths.results)
        where = f"median of {n} records in this store"
    print(format_plan(plan_rows(args.overrides, rate, suite), True, plan_teachers(args.overrides, rate, suite),
                      (rate, where)))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from kdbench.experiment import results as store
    from kdbench.orchestration.config import compose

    cfg = compose(args.overrides, check=False)
    root = cfg.paths.results
    if args.results_command == "validate":
        stored = store.load_records(root)
        bad = [r for r in stored if r.errors]
        if bad:
            print(store.format_problems(bad))
            print(f"{len(bad)} of {len(stored)} records in {store.runs_dir(root)} are invalid")
            return 1
        print(f"all {len(stored)} records in {store.runs_dir(root)} are valid")
    elif args.results_command == "migrate":
        from kdbench.experiment.migrate import migrate_store

        m = migrate_store(root, dry_run=args.dry_run)
        for old, new in m.migrated:
            print(f"{'would migrate' if args.dry_run else 'migrated'} {old} -> {new}")
        print("\n".join(m.problems))
        print(f"{len(m.migrated)} record(s) {'to migrate' if args.dry_run else 'migrated'}, {m.current} already "
              f"current, {len(m.problems)} problem(s) in {store.runs_dir(root)}")
        return 1 if m.problems else 0
    elif args.results_command == "export":
        print(f"wrote {store.export_bundle(root, args.bundle)}")
    else:
        added = store.import_bundle(args.bundle, root, cfg.paths.runs)
        print(f"added {len(added)} record(s) to {store.runs_dir(root)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from kdbench.experiment.records import write_json_atomic
    from kdbench.orchestration.artifacts import eval_target

    out = eval_target(args.target, args.overrides, args.split, args.arch)
    m = out["metrics"]
    what = f"run {out['run_id']}" if out["record"] is not None else out["model"]
    line = (f"{what} ({out['arch']}) on {out['dataset']} {out['split']}: top-1 {m['top1']:.2f}, top-5 {m['top5']:.2f}, "
            f"ECE {m['ece']:.2f}")
    if m.get("teacher_agreement") is not None:
        line += f", agreement with teacher {out['teacher']['hash']} {m['teacher_agreement']:.2f}"
    print(line)
    if out["record"] is not None:
        rec, diff = out["record"]["top1"], m["top1"] - out["record"]["top1"]
        print(f"record: top-1 {rec:.2f} ({'the same' if diff == 0 else f'differs by {diff:+.4f}'})")
    if args.out:
        write_json_atomic(Path(args.out), out)
        print(f"metrics written to {args.out}")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from kdbench.orchestration.config import compose
    from kdbench.report import build_leaderboard, check_leaderboard

    results = compose(args.overrides, check=False).paths.results
    opts = {"metric": args.metric, "compare_short": args.compare_short, "against": args.against}
    if args.check:
        problems = check_leaderboard(results, Path(args.out), **opts)
        if problems:
            print("\n".join(problems))
            return 1
        print(f"{args.out}/ is up to date with {results}/")
    else:
        print(f"wrote {len(build_leaderboard(results, Path(args.out), **opts))} files to {args.out}/")
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from kdbench.data import load_data
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.teacher import ensure_teacher, import_teacher
    from kdbench.orchestration.teacher_cache import get_teacher, list_teachers

    if args.teacher_command == "import":
        from kdbench.models import check_model_name

        check_model_name(args.arch)
        if not Path(args.path).is_file():
            raise KDBenchError(f"no checkpoint file at {args.path}")
        cfg = compose([f"dataset={args.dataset}", *args.overrides], check=False)
        data = None if args.no_eval else load_data(cfg)
        print(_teacher_line(import_teacher(Path(args.path), args.arch, cfg, data)))
        return 0
    cfg = compose(args.overrides)
    if args.teacher_command == "train":
        print(_teacher_line(ensure_teacher(cfg, load_data(cfg))))
    elif args.teacher_command == "list":
        teachers = list_teachers(Path(cfg.paths.teachers))
        print("\n".join(_teacher_line(t) for t in teachers) if teachers
              else f"no cached teachers in {cfg.paths.teachers}")
    else:
        t = get_teacher(Path(cfg.paths.teachers), args.hash)
        meta = {k: v for k, v in t.meta.items() if k != "history"}
        print(json.dumps({"path": str(t.path), **meta}, indent=2))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.doctor import clean, find_leftovers, format_leftovers

    found = find_leftovers(compose(args.overrides, check=False))
    if args.clean:
        clean(found)
    print(format_leftovers(found, args.clean))
    return 0


COMMANDS = {"list": _cmd_list, "show": _cmd_show, "config": _cmd_config, "run": _cmd_run, "bench": _cmd_bench,
            "speed": _cmd_speed, "plan": _cmd_plan, "status": _cmd_plan, "results": _cmd_results,
            "leaderboard": _cmd_leaderboard, "teacher": _cmd_teacher, "eval": _cmd_eval, "doctor": _cmd_doctor}


def interrupted_state(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    """What is true after Ctrl-C, by command: what the interrupted code said it had done (a training step
    checkpointed, an import finished or not), else what the command can have left."""
    said = str(exc.args[0]) if exc.args and exc.args[0] else ""
    sub = getattr(args, "results_command", None) or getattr(args, "teacher_command", None) or (
        "clean" if getattr(args, "clean", False) else None)
    trains = args.command in ("run", "bench") or (args.command == "teacher" and sub == "train")
    if trains:
        return (f"{said} (resume=true continues)" if said else
                "no training step was under way: finished runs are stored, and a run that had begun resumes "
                "from its last checkpoint (resume=true)")
    if said:
        return said
    return {
        ("results", "import"): "nothing was imported",
        ("results", "migrate"): "the records migrated so far are in place; `kdbench results migrate` again finishes "
                                "(a second run only does what is left)",
        ("results", "export"): "no bundle was written",
        ("doctor", "clean"): "some leftovers may have been removed; `kdbench doctor` lists what is left",
        ("teacher", "import"): "a teacher enters the cache whole or not at all: `kdbench teacher list` shows "
                               "whether it did",
        ("leaderboard", None): "a folder being built is marked unfinished (`kdbench leaderboard --check` says so); "
                               "the same command again finishes it",
    }.get((args.command, ("check" if args.check else None) if args.command == "leaderboard" else sub),
          "nothing was changed")


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command: one small function per command (``COMMANDS``)."""
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and any(a in ("-m", "--multirun") for a in argv[1:]):
        # Sweeps go through Hydra's entry point so its launchers (joblib, submitit, ray) work.
        from kdbench.orchestration.hydra_app import launch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return launch(argv[1:])
        except KDBenchError as exc:
            print(f"kdbench: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow a command's options (`teacher import F --arch A --dataset D paths.work=X`).
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return dispatch(args)
    except KDBenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"kdbench: interrupted; {interrupted_state(args, exc)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kdbench list pairs | head`: the reader left; not an error of ours
        _quiet_stdout()
        return 0
    except OSError as exc:  # a full or read-only disk, a missing folder: one message naming the path
        logging.getLogger(__name__).debug("the traceback", exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"kdbench: error: {exc.strerror or exc}{where}; what was written before is whole (writes are atomic); "
              "free space or fix permissions and run the command again (-v shows the traceback)", file=sys.stderr)
        return 2


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
