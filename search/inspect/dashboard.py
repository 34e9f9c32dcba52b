"""`hwsearch dashboard`: optuna-dashboard on a study's storage, with its trial artifacts (plan JSON, ONNX).

optuna-dashboard is an optional dependency (`pip install hwsearch[dashboard]`): the search never needs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.errors import UserError

EXTRA = "pip install 'hwsearch[dashboard]'"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="browse a study in optuna-dashboard (trials, plans, ONNX artifacts)")
    p.add_argument("--study", required=True, metavar="NAME", help="study name (results/NAME/study.db)")
    p.add_argument("--results", default="results", metavar="DIR", help="folder holding NAME/ (default: results)")
    p.add_argument("--storage", metavar="URL",
                   help="the study's storage instead of results/NAME/study.db (postgresql://..., journal:PATH)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact folder (default: results/NAME/artifacts, else the one the run recorded)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(f"optuna-dashboard is not installed: {EXTRA}") from None
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from search.inspect.api import is_storage_url, load_study, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage and not is_storage_url(args.storage):
        raise UserError(f"--storage {args.storage!r}: expected sqlite:///path, postgresql://user@host/db or "
                        "journal:PATH")
    view = (load_study(args.storage, results=args.results, study_name=args.study) if args.storage
            else load_study(args.study, results=args.results))
    if args.artifacts:
        artifacts: Path | None = Path(args.artifacts)
        if not artifacts.is_dir():
            raise UserError(f"--artifacts {args.artifacts}: folder not found")
    else:
        try:
            artifacts = view.artifacts_dir
        except UserError as e:  # the trials are still worth browsing without their files
            print(f"hwsearch dashboard: warning: {e}; trial artifacts will not open", file=sys.stderr)
            artifacts = None
    # A storage of our own (the search's opener: journal:PATH, RDB with the same options); the dashboard
    # serves requests from threads, so it gets no object the view also uses.
    storage = open_storage(view.storage_url)
    study_id = storage.get_study_id_from_name(view.name)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard {optuna_dashboard.__version__}: study '{view.name}' at "
          f"http://{host}:{args.port}/dashboard/studies/{study_id} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    except OSError as e:  # the port is taken, the address is not ours, ...
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None
    return 0
