"""``launcher plan --calibrate RUN_DIR``: an earlier run's measured tokens/s per device and energy
per token, read through its report (:func:`launcher.report.build_report`), to replace the
forecast's MFU and power assumptions."""
from __future__ import annotations

import os

from launcher.errors import JobError
from launcher.plan.types import Calibration


def read_calibration(run_dir: str | os.PathLike) -> Calibration:
    from launcher.report.build import build_report

    r = build_report(run_dir)
    thr, energy, job = r.throughput, r.energy, r.job
    tps = thr.tokens_per_s_per_device
    ept = energy.energy_per_token_j if energy.available else None
    if tps is None and ept is None:
        raise JobError(f"--calibrate {run_dir}: the run recorded no training steps and no energy to calibrate with")
    return Calibration(run_dir=str(r.run_dir), tokens_per_s_per_device=tps, energy_per_token_j=ept,
                       pue=energy.pue or 1.0, world_size=job.world_size, strategy=job.strategy,
                       zero_stage=job.zero_stage, accelerator=job.accelerator)
