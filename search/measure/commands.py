"""CLI glue for `hwsearch measure`, `hwsearch agent` and `hwsearch agents` (search/cli.py calls `register`).

Nothing heavy is imported at module level so `hwsearch --help` stays fast; handlers return exit codes and
raise UserError for bad input (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import TrialFailure, UserError

if TYPE_CHECKING:
    from search.config.profile import DeviceProfile
    from search.measure.record import Measurement


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "measure", help="measure an ONNX model's latency and peak memory on a device profile",
        description="Measure latency (fresh process per round, same-round reference for drift) and peak "
                    "memory of MODEL on the device a profile describes.")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to measure")
    p.add_argument("--device", required=True, metavar="PROFILE", help="device profile YAML file")
    p.add_argument("--reference", metavar="REF.onnx",
                   help="model timed in the same rounds (e.g. the fp32 teacher) for drift correction")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
    p.set_defaults(func=measure_command)

    a = subparsers.add_parser(
        "agent", help="run the remote measurement agent (on the device)",
        description="Serve measurements over HTTP for the remote backend (see docs/agent.md). Needs a token "
                    "file; binds 127.0.0.1 unless --host says otherwise.")
    a.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    a.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    a.add_argument("--token-file", required=True, metavar="F", help="file holding the bearer token")
    a.add_argument("--max-upload-mb", type=float, default=64, help="largest accepted model (default: 64)")
    a.add_argument("--queue-size", type=int, default=2, help="requests that may wait for the running one")
    # Limits: None takes the agent's own default (agent.DEFAULTS, shown by `python agent.py --help`); read there so
    # that building this parser does not import the agent.
    a.add_argument("--max-connections", type=int, help="connections served at once, one thread each (default 64)")
    a.add_argument("--header-timeout-s", type=float, help="seconds to send the whole header block (default 5)")
    a.add_argument("--read-timeout-s", type=float, help="seconds an upload may stall (default 30)")
    a.add_argument("--max-request-seconds", type=float,
                   help="most seconds one measurement may run, as (rounds + 1) x timeout_s (default 600)")
    a.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key); the "
                   "profile pins its sha256, printed at start, as measure.tls_sha256")
    a.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    a.set_defaults(func=agent_command)

    g = subparsers.add_parser("agents", help="the state of a remote profile's agents (url and pool)",
                              description="Ask every agent of a remote profile for /v1/info: whether it answers, "
                                          "its device, ONNX Runtime and queue. Exit status 1 when one does not.")
    g.add_argument("--device", required=True, metavar="PROFILE", help="device profile (name or YAML file)")
    g.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
    g.set_defaults(func=agents_command)


def _model_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found")
    return p


def measure_command(args: argparse.Namespace) -> int:
    from search.config.profile import load_profile
    from search.measure import get_backend

    model = _model_file(args.model, "model file")
    reference = _model_file(args.reference, "reference model file") if args.reference else None
    profile = load_profile(args.device)
    try:
        from rich.console import Console

        status = f"measuring {model.name} on {profile.name} ({profile.measure.backend})"
        with Console(stderr=True).status(status):
            result = get_backend(profile).measure(model, reference)
    except TrialFailure as e:
        print(f"hwsearch measure: error: {e}", file=sys.stderr)
        return 2 if e.kind in ("load", "input") else 1  # a file ONNX Runtime cannot load is bad input
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        _table(result, profile)
    return 0


def _table(m: Measurement, profile: DeviceProfile) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    stat = profile.measure.statistic
    t = Table(title=f"{m.device}  (ORT {m.ort_version}, {m.threads} thread(s), {m.backend})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    lat, ref = m.latency, m.reference
    rows = [(f"latency p50 / p90 / mean (ms, batch {m.batch})",
             " / ".join(ms(lat.get(s)) if lat else "-" for s in ("p50", "p90", "mean"))),
            ("latency cv, runs", f"{lat.cv:.3f}, {lat.runs}" if lat else "-")]
    if ref is not None:
        rows += [("reference p50 (ms, same rounds)", ms(ref.p50_ms)),
                 ("ratio to reference (p50)", f"{m.ratio():.3f}"),
                 (f"drift-corrected {stat} (ms)", ms(m.corrected(stat)))]
    rows += [(f"objective ({stat}, ms)", ms(m.objective(stat))),
             (f"peak memory total (MB, batch {m.memory_batch})", mb(m.memory_total_mb)),
             ("  model's share (MB)", mb(m.memory_model_mb)),
             ("  ONNX Runtime overhead (MB)", mb(m.memory_overhead_mb)),
             ("over budget", "yes" if m.over_budget else "no")]
    if m.error:
        rows.append(("stopped", m.error))
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def agent_command(args: argparse.Namespace) -> int:
    from search.measure import agent

    token = agent.read_token(args.token_file)
    if args.max_upload_mb <= 0 or args.queue_size < 0 or not 0 <= args.port <= 65535:
        raise UserError("--max-upload-mb must be > 0, --queue-size >= 0 and --port in 0..65535")
    limits = {"max_connections": args.max_connections, "header_timeout_s": args.header_timeout_s,
              "read_timeout_s": args.read_timeout_s, "max_request_s": args.max_request_seconds}
    limits = {k: agent.DEFAULTS[k] if v is None else v for k, v in limits.items()}
    agent.serve(args.host, args.port, token, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size,
                tls_cert=args.tls_cert, tls_key=args.tls_key, **limits)
    return 0


def agents_command(args: argparse.Namespace) -> int:
    from search.config.profile import load_profile
    from search.measure.remote import RemoteBackend

    profile = load_profile(args.device)
    if profile.measure.backend != "remote":
        raise UserError(f"--device {args.device}: profile '{profile.name}' measures locally (measure.backend: "
                        "local); agents belong to a remote profile")
    rows = []
    for url, info in RemoteBackend(profile, retries=1).agent_infos():
        if isinstance(info, str):
            rows.append({"url": url, "up": False, "reason": info})
            continue
        q = info.get("queue", {})
        rows.append({"url": url, "up": True, "device": info.get("summary"), "ort": info.get("ort_version"),
                     "agent": info.get("agent_version"), "busy": q.get("busy"), "waiting": q.get("waiting"),
                     "queue_size": q.get("size")})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"agents of {profile.name}")
        for col in ("agent", "state", "device", "ONNX Runtime", "queue"):
            t.add_column(col)
        for r in rows:
            if r["up"]:
                queue = f"{'busy' if r['busy'] else 'idle'}, {r['waiting']} waiting of {r['queue_size']}"
                t.add_row(r["url"], "up", r["device"] or "?", r["ort"] or "?", queue)
            else:
                t.add_row(r["url"], "DOWN", r["reason"][:100], "-", "-")
        Console().print(t)
    return 0 if all(r["up"] for r in rows) else 1
