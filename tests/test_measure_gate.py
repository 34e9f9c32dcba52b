"""The measurement gate covers every CPU-heavy stage of a study worker, not only distillation steps: while a
local measurement runs (another process holding `exclusive`), prune/export/quantize/evaluate wait; a measurement
waits for such a stage in flight; nested stages do not deadlock against a waiting measurement."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from search.measure.local import cpu_work
from search.study.objective import GATED_STAGES, StageTimer

# Another worker's measurement: holds the gate for `hold` seconds, printing when it got it and when it let go.
MEASURER = """
import sys, time
from search.measure.local import exclusive
print("waiting", time.time(), flush=True)
with exclusive():
    print("held", time.time(), flush=True)
    time.sleep(float(sys.argv[1]))
    print("released", time.time(), flush=True)
"""


def _measurer(hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MEASURER, str(hold)], stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen, word: str) -> float:
    kind, when = proc.stdout.readline().split()
    assert kind == word, (kind, word)
    return float(when)


def test_cpu_heavy_stages_wait_for_a_running_measurement():
    assert {"prune", "export", "quantize", "evaluate"} <= GATED_STAGES and not {"measure", "distill"} & GATED_STAGES
    timer = StageTimer(guard=cpu_work)
    proc = _measurer(1.5)
    try:
        _line(proc, "waiting")
        held = _line(proc, "held")
        with timer("store"):  # not CPU-heavy: runs beside the measurement
            store_at = time.time()
        with timer("evaluate"):
            evaluate_at = time.time()
        released = _line(proc, "released")
    finally:
        proc.wait(30)
    assert store_at - held < 1.0
    assert evaluate_at >= released - 0.05, (held, evaluate_at, released)


def test_a_measurement_waits_for_the_stage_in_flight_and_nested_stages_go_on():
    """A stage holds the gate; a measurement arrives and waits; the stage then enters a nested stage (an export
    inside a quantize), which must go on rather than queue behind the measurement that waits for it. (Were it to
    queue, the watchdog ends the deadlock by killing the measurer, and the nested stage is late.)"""
    timer = StageTimer(guard=cpu_work)
    with timer("quantize"):
        proc = _measurer(0.1)
        watchdog = threading.Timer(10.0, proc.kill)
        watchdog.start()
        try:
            _line(proc, "waiting")
            time.sleep(1.0)  # the measurement is now blocked on this stage
            entered = time.time()
            with timer("export"):
                nested_s = time.time() - entered
            left = time.time()
        finally:
            watchdog.cancel()
    held = _line(proc, "held")
    proc.wait(30)
    assert nested_s < 1.0, nested_s
    assert held >= left - 0.05, (left, held)  # the measurement began only once the outer stage ended
