#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with the wheels the GPU machine's image lacks, for
# bench/gpu_check.sh. Run HERE (with network to PyPI), not on the GPU machine.
#
# The GPU image (Python 3.12, torch 2.11+cu130, transformers, accelerate, peft, pandas, pyarrow,
# rich, ...: /work/.library/device/KINDS.md) lacks: deepspeed, pydantic, datasets, codecarbon and
# their own missing needs, listed below one by one. Everything is fetched with --no-deps so that
# pip never pulls a second torch; versions are the ones this project is tested with here.
# deepspeed ships only a source archive: `pip wheel` builds a pure-Python wheel from it (its CUDA
# ops are JIT-built on the GPU machine at first use), which needs torch installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
BIN=(pydantic-core==2.46.4 rapidfuzz==3.14.6 cryptography==48.0.0 cffi==2.0.0 multiprocess==0.70.19)
PURE=(pydantic==2.13.4 annotated-types==0.7.0 typing-inspection==0.4.2 hjson==3.1.0
      datasets==5.2.0 dill==0.4.1
      codecarbon==3.3.2 arrow==1.4.0 tzdata authlib==1.9.10 joserfc==1.8.0 pycountry==26.2.16
      questionary==2.1.1 prompt-toolkit==3.0.52 wcwidth pycparser)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d .whl "${BIN[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "${PURE[@]}"
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
du -sh .whl
