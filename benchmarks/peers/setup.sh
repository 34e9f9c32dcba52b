#!/usr/bin/env bash
# The peer tools' virtual environments for benchmarks/bench_peers.py: benchmarks/peers/.venv-olive
# (Microsoft Olive) and benchmarks/peers/.venv-onc (onnx-neural-compressor). Separate from .venv because
# their pins conflict with ours. Idempotent: a venv whose requirements file is unchanged is left alone.
#
#     nice -n 19 bash benchmarks/peers/setup.sh        # PYTHON=python3.11 to pick the interpreter
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
export OLIVE_DISABLE_TELEMETRY=1 PIP_DISABLE_PIP_VERSION_CHECK=1

setup_venv() {  # name, requirements file
    local venv="$HERE/.venv-$1" req="$HERE/$2" stamp="$HERE/.venv-$1/.installed"
    local want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "$1: up to date ($venv)"
        return
    fi
    local start=$SECONDS
    [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
    # torch first, pinned: a bare or ranged torch requirement from the peer would pull a multi-GB CUDA build.
    "$venv/bin/pip" install --quiet torch==2.13.0
    "$venv/bin/pip" install --quiet -r "$req"
    echo "$want" > "$stamp"
    echo "$1: installed in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1) ($venv)"
}

setup_venv olive requirements-olive.txt
setup_venv onc requirements-onc.txt
