"""``launcher plan --calibrate RUN_DIR``: an earlier run's configuration and measurements (step
time, tokens/s per device, energy per token), read through its report
(:func:`launcher.report.history.point_of`), for the forecast to scale from instead of the MFU and
power assumptions."""
from __future__ import annotations

import os

from launcher.plan.types import CalibrationPoint


def read_calibration(run_dir: str | os.PathLike) -> CalibrationPoint:
    """The run's CalibrationPoint; one JobError when it has nothing to calibrate with."""
    from launcher.report.history import point_of

    return point_of(run_dir)
