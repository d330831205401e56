"""``python -m launcher.prebuild``: build DeepSpeed's host-side ops once, at install time.

DeepSpeed JIT-builds the C++ ops that offload needs the first time a job uses them, on every
rank, into ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``): CPU Adam
(``offload_optimizer: cpu``, about a minute on 2 cores) and async I/O (NVMe offload, about three
minutes, with Debian's libaio-dev). On a cluster that first use is inside a Slurm job, after the
queue, with the GPUs held. Run this once where the job will run (a node image, a shared home),
as DeepSpeed's ``DS_BUILD_CPU_ADAM=1 DS_BUILD_AIO=1`` would at install.

One line per op: built (or already built) and where, or why not (nothing here needs it: an op
that cannot be built here is refused by `launcher plan` with what to install). Exit 0 unless an
op that can be built here fails to build.
"""
from __future__ import annotations

import os
import sys
import time

OPS = (("CPUAdamBuilder", "cpu_adam", "offload_optimizer: cpu"),
       ("AsyncIOBuilder", "async_io", "NVMe offload"))


def main() -> int:
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    from launcher.prepare import async_io_buildable
    from launcher.train.strategies.zero import import_deepspeed

    # the accelerator launcher's ranks name (render_env): the ops for this machine, no probing
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    failed = 0
    for builder_name, op, what in OPS:
        if builder_name == "AsyncIOBuilder" and not async_io_buildable():
            print(f"{op}: not built: it needs libaio-dev (apt-get install libaio-dev); only {what} uses it",
                  flush=True)
            continue
        builder = get_accelerator().create_op_builder(builder_name)
        t0 = time.time()
        try:
            builder.load(verbose=False)
        except Exception as e:  # noqa: BLE001 - the compiler's own message is in what it printed
            failed += 1
            print(f"{op}: build failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                  file=sys.stderr, flush=True)
            continue
        where = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
        print(f"{op}: ready in {time.time() - t0:.0f} s ({what}), cached in {where}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
