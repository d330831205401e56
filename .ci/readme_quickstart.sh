#!/usr/bin/env bash
# The README's first command, as a new user types it, in a virtual environment of its own (no test
# extras, the `launcher` console script, not `python -m launcher`): a dependency that only the
# test extras bring, or a console script that does not start, fails CI here. Then the embedded
# default must finish (COMPLETED) and learn (its eval loss falls, its exact-match accuracy rises).
# With a file argument, the run directory stays and its path is written there: the suite's
# test_embedded_default_learns reads that run instead of training the same default again.
set -euo pipefail
keep="${1:-}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
before="$work/runs-before"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
cd "$repo"
command=$(sed -n '/^## Set up a fresh machine/,/^```$/p' README.md | sed -n '/^```bash$/,/^```$/p' | sed '1d;$d')
echo "readme: $command"
[ "$command" = "pip install torch==2.13.0 && pip install -e . && launcher run" ] || {
  echo "readme: the README's first command changed; update .ci/readme_quickstart.sh with it" >&2; exit 1; }
ls -d runs/*/ 2>/dev/null | sort >"$before" || true
export PIP_QUIET=1
eval "$command"
run=$(comm -13 "$before" <(ls -d runs/*/ | sort) | tail -1)
[ -n "$run" ] || { echo "readme: launcher run made no run directory under runs/" >&2; exit 1; }
if [ -n "$keep" ]; then
  echo "$repo/$run" >"$keep"
else
  trap 'rm -rf "$work" "$repo/$run"' EXIT
fi
RUN="$run" python - <<'PY'
import json
import os
from pathlib import Path

run = Path(os.environ["RUN"])
assert (run / "COMPLETED").exists(), "the embedded default did not complete"
evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
first, last = evals[0], evals[-1]
print(f"readme: eval loss {first['eval_loss']:.3f} -> {last['eval_loss']:.3f}, "
      f"accuracy {first.get('accuracy')} -> {last.get('accuracy')}")
assert last["eval_loss"] < 0.5 * first["eval_loss"], "the embedded default did not learn"
assert (last.get("accuracy") or 0) > (first.get("accuracy") or 0), "exact-match accuracy did not rise"
PY
echo "readme: the first command installs, runs the embedded default, and it learns"
