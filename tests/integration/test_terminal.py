"""A quiet terminal: what `launcher run` shows of a run, piped and on a terminal.

* piped (as in CI or `| tee`): a 200-step run prints at most about 30 step lines, none of the
  libraries' noise (DeepSpeed's "Setting accelerator", its op builds, FutureWarnings, what
  transformers logs while a rank loads the weights), and ends with the summary table; the noise is
  kept, whole, in RUN_DIR/logs/rank<R>.log;
* on a terminal (a real pseudo-terminal): the step lines become one progress line that rich
  redraws in place, ending at the last step.
"""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import rundir

pytestmark = pytest.mark.slow

NOISE = ("FutureWarning", "DeprecationWarning", "UserWarning", "Setting accelerator", "Setting ds_accelerator",
         "built successfully", "[WARNING]", "Traceback")
STEP = re.compile(r"\[launcher\] step (\d+)/(\d+) \|")


def test_a_piped_run_prints_few_step_lines_and_no_library_noise(tmp_path):
    run_dir = tmp_path / "piped"
    # transformers at info level: its lines from loading the weights are printed by the ranks alone
    # (the default run's ranks print no warning of a library any more, so these stand for them)
    out = subprocess.run([sys.executable, "-m", "launcher", "run", "--run-dir", str(run_dir), "train.max_steps=80",
                          "train.eval_accuracy_samples=0"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "info"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    shown = out.stdout + out.stderr
    steps = [int(m.group(1)) for m in STEP.finditer(shown)]
    # about progress.PIPED_LINES = 30 lines (every 3rd step of 80); a line per step would be 80
    assert 5 <= len(steps) <= 31 and steps[-1] == 80, steps
    assert steps == sorted(set(steps)), "each step line once, in order"
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} reached the terminal:\n{shown[-3000:]}"
    assert "preflight ok" in shown and "Status" in shown and "completed" in shown
    # every line the libraries printed is in the rank logs, and every step is in metrics.jsonl
    logs = {p.name: p.read_text() for p in sorted((run_dir / rundir.LOGS).glob("rank*.log"))}
    assert sorted(logs) == ["rank0.log", "rank1.log"], sorted(logs)
    rank_only = "[transformers] loading weights file"
    assert all(rank_only in text for text in logs.values()), "what the libraries print in a rank is kept in logs/"
    assert rank_only not in shown
    assert "[launcher] step 80/80" in logs["rank0.log"]
    assert [r.step for r in rundir.read_metrics(run_dir).of(rundir.TrainRecord)] == list(range(1, 81))


def run_in_pty(argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """``argv`` with a pseudo-terminal as its stdout and stderr (80 columns): its exit code and
    everything it wrote, escape sequences included."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "30", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd, env=env,
                            close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", errors="replace")


def test_on_a_terminal_the_steps_are_one_redrawn_line(tmp_path):
    rc, raw = run_in_pty([sys.executable, "-m", "launcher", "run", "--run-dir", str(tmp_path / "tty"),
                          "train.max_steps=40", "train.eval_accuracy_samples=0"], tmp_path)
    assert rc == 0, raw[-3000:]
    assert "preflight ok" in raw and "completed" in raw
    assert not STEP.search(raw), "no raw step line: they are drawn as the progress line"
    # rich redraws the line in place (carriage return / cursor control), ending at the last step
    assert "\r" in raw or "\x1b[" in raw
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "40/40" in plain, plain[-2000:]
    for noise in NOISE:
        assert noise not in plain, f"{noise!r} reached the terminal"
