#!/usr/bin/env bash
# The GPU check: one script for a lent single-GPU machine (H100/H200, no network), ~8-10 min.
#
#   bash bench/gpu_check.sh            # install, then bench/gpu_check.py on the GPU
#   bash bench/gpu_check.sh --smoke    # no install; the same Python on CPU, tiny dims, 2 steps
#
# Install: the packages the GPU image lacks travel as wheels in .whl/ at the repo root (made here
# by bench/prepare_wheels.sh; see bench/README.md) and are installed with --no-index. The project
# itself is used from the working tree (PYTHONPATH), so nothing the image already has (torch with
# CUDA, transformers, accelerate, peft) is replaced.
# Output: the table on stdout; with $OUT set, gpu_check.log and gpu_check.json are written there.
# Extra arguments go to bench/gpu_check.py (e.g. --steps 30, --budget-s 400, --only launcher-fsdp2-full).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
SMOKE=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && SMOKE=1; done

OUTDIR=${OUT:-/tmp/launcher-gpu-check-out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
say() { echo "[gpu_check] $*" | tee -a "$LOG"; }

if [ "$SMOKE" = 0 ]; then
  if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site (--no-index --no-deps)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "no .whl/ folder: using the packages already installed"
  fi
  # the project from the working tree; torchrun's ranks inherit PYTHONPATH
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # DeepSpeed JIT-builds FusedAdam on its first CUDA start: build once, shared by every run
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
  export LAUNCHER_CACHE=${LAUNCHER_CACHE:-/tmp/launcher-cache}
  "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys
missing = []
for m in ("torch", "transformers", "accelerate", "peft", "deepspeed", "datasets", "codecarbon", "pydantic",
          "launcher", "pynvml"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m} ({type(e).__name__}: {e})")
import torch
print(f"  cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
if missing:
    sys.exit("missing: " + "; ".join(missing) + " -- prepare .whl/ with bench/prepare_wheels.sh")
EOF
  nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG" || true
fi

set +e
PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py --json "$OUTDIR/gpu_check.json" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
say "exit $rc; log: $LOG"
exit "$rc"
