"""Command line: parses, calls the API, prints. Heavy imports stay inside the handlers."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from search.errors import RunStopped, UserError, disk_full

# Subcommand modules, each with `register(subparsers)`; imported lazily only for their parsers.
COMMAND_MODULES = ("search.commands", "search.measure.commands", "search.study.commands", "search.inspect.commands")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit status 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from search import __version__

    parser = _Parser(prog="hwsearch", description=(
        "Hardware-aware compression search: distillation, structured pruning and per-layer "
        "quantization, scored by latency and memory measured on a device profile."))
    parser.add_argument("--version", action="version", version=f"hwsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UserError, RunStopped) as e:
        print(f"hwsearch {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `hwsearch front | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as e:
        if (full := disk_full(e)) is None:
            raise
        print(f"hwsearch {args.command}: error: {full}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hwsearch {args.command}: interrupted", file=sys.stderr)
        return 130


def existing_file(value: str) -> Path:
    """argparse type for an input file that must exist."""
    p = Path(value)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return p


if __name__ == "__main__":
    sys.exit(main())
