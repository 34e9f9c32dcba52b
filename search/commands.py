"""Foundation subcommands: `validate`, `init`, `tasks`, `spaces`, `profiles`, `dashboard` (defined with the inspection
stage) and `sensitivity` (defined with the study)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from search.errors import ConfigError, UserError

PROFILE_KEYS = {"runtime", "precisions", "channel_multiple", "budgets", "measure"}
SPACE_KEYS = {"distillation", "pruning", "quantization", "accuracy"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check device-profile and search-space files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--device", metavar="PROFILE", help="also check that spaces only ask for bits this profile runs")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("init", help="write a commented task file that runs as written (then make it yours)")
    p.add_argument("path", metavar="FILE.py", help="the task file to write (not overwritten)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("tasks", help="list the built-in tasks and their teachers")
    p.add_argument("--results", default="results", metavar="DIR", help="results folder holding teachers/")
    p.add_argument("--retrain", metavar="NAME", help="train this built-in task's teacher again (into DIR/teachers/)")
    p.add_argument("--ship", action="store_true", help="with --retrain: also replace the shipped teacher "
                   "(search/tasks/shipped/, what a fresh clone verifies and uses)")
    p.add_argument("--data-dir", metavar="DIR", help="folder of Fashion-MNIST IDX files (or $HWSEARCH_DATA)")
    p.set_defaults(func=cmd_tasks)

    for kind, name, flag in (("space", "spaces", "--space"), ("profile", "profiles", "--device")):
        p = sub.add_parser(name, help=f"list the shipped {name} (each usable by name: {flag} NAME)")
        p.set_defaults(func=cmd_shipped, kind=kind)

    from search.inspect.dashboard import register as register_dashboard  # parser only: no optuna import

    register_dashboard(sub)

    from search.seeding.commands import register as register_sensitivity  # parser only: no torch

    register_sensitivity(sub)


def file_kind(path: str | Path) -> str:
    """'profile' or 'space', decided by the keys the file uses (then by its folder)."""
    from search.config import read_yaml_mapping

    keys = set(read_yaml_mapping(path))
    if keys & PROFILE_KEYS and not keys & SPACE_KEYS:
        return "profile"
    if keys & SPACE_KEYS and not keys & PROFILE_KEYS:
        return "space"
    parent = Path(path).resolve().parent.name
    if parent == "device_profiles":
        return "profile"
    if parent == "spaces":
        return "space"
    raise ConfigError(f"{path}: cannot tell a device profile ({', '.join(sorted(PROFILE_KEYS))}) from a search "
                      f"space ({', '.join(sorted(SPACE_KEYS))}) by its keys")


def cmd_validate(args: argparse.Namespace) -> int:
    from search.config import load_profile, load_space

    device = load_profile(args.device) if args.device else None
    failed = 0
    for f in args.files:
        try:
            kind = file_kind(f)
            if kind == "profile":
                prof = load_profile(f)
                per_op = {op: prof.bits([op]) for op in prof.precisions} if isinstance(prof.precisions, dict) \
                    else {"every op": prof.bits()}
                bits = "; ".join(f"{op} {', '.join(map(str, b))}" for op, b in per_op.items())
                print(f"OK  {f}: device profile '{prof.name}' (bits: {bits})")
            else:
                space = load_space(f)
                if device is not None:
                    space.bits_for(device, source=f)
                print(f"OK  {f}: search space '{space.name}'")
        except UserError as e:
            failed += 1
            print(f"hwsearch validate: error: {e}", file=sys.stderr)
    return 2 if failed else 0


def cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    path = Path(args.path)
    if path.suffix != ".py":
        raise UserError(f"{path}: the task file must end in .py (it is imported as Python)")
    if path.exists():
        raise UserError(f"{path}: already exists; not overwritten")
    text = files("search.tasks").joinpath("template.py.txt").read_text().replace("{filename}", str(path))
    try:
        path.write_text(text)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    print(f"wrote {path}: run it with\n  hwsearch run --task {path}:make_task --space default --device local-1core "
          "--trials 24 --study mine")
    return 0


def cmd_shipped(args: argparse.Namespace) -> int:
    from search.config import load_profile, load_space
    from search.config.shipped import shipped_dir, shipped_names

    load = load_space if args.kind == "space" else load_profile
    print(f"shipped {args.kind}s ({shipped_dir(args.kind)}):")
    for name in shipped_names(args.kind):
        print(f"  {name:<22} {load(name).description}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from search.tasks.builtin import BUILTIN_TASKS, load_builtin
    from search.tasks.teacher import cached_meta, output_kind

    if args.retrain:
        if args.retrain not in BUILTIN_TASKS:
            raise UserError(f"--retrain {args.retrain!r}: not a built-in task (built-ins: {', '.join(BUILTIN_TASKS)})")
        task = load_builtin(args.retrain, data_dir=args.data_dir, results_dir=args.results, retrain=True)
        info = task.teacher_info
        src = Path(args.results) / "teachers" / f"{args.retrain}-{info['key']}"
        print(f"trained {args.retrain} teacher {info['key']} in {info['train_seconds']:.0f} s: val "
              f"{task.metric.name} {info['val_accuracy']:.2%} ({src}.pt)")
        if args.ship:
            from search.tasks.teacher import SHIPPED_DIR

            for old in SHIPPED_DIR.glob(f"{args.retrain}-*"):
                old.unlink()
            for suffix in (".pt", ".json"):
                shutil.copyfile(src.with_suffix(suffix), SHIPPED_DIR / f"{src.name}{suffix}")
            print(f"shipped it: {SHIPPED_DIR}/{src.name}.pt")

    print(f"{'task':<15} {'input':<10} {'teacher':<40} description")
    for name, b in BUILTIN_TASKS.items():
        meta = cached_meta(args.results, name)
        if meta:
            judged = "next-token top-1" if output_kind(b.spec) == "tokens" else "top-1"
            teacher = (f"{meta['params'] / 1e3:.1f}k params, {meta['macs'] / 1e6:.2f}M MACs, "
                       f"val {judged} {meta['val_accuracy'] * 100:.2f}%")
        else:
            teacher = "not trained yet (trained on first use)"
        shapes = b.input_shape if isinstance(b.input_shape[0], tuple) else (b.input_shape,)
        shape = "+".join("x".join(map(str, one)) for one in shapes)  # several inputs: 32+32
        print(f"{name:<15} {shape:<10} {teacher:<40} {b.description}")
    return 0
