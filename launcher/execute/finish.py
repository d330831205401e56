"""A job's last step, in the process that launched it, never in a rank: Slurm's allocation
(sacct), the report files (JSON, Markdown, HTML), the run added to the calibration history
(launcher.report.history), and the report's figures added to the job's experiment-tracker
runs. `launcher run` calls it once torchrun has returned; a Slurm job's batch
script and a --hosts job's first-host script call `launcher report RUN_DIR --finish`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from launcher import rundir


def finish_run(run_dir: str | os.PathLike, *, slurm_job_id: Optional[str] = None,
               warn: Callable[[str], None] = print):
    """Write the reports of a run whose job completed; the Report, or None when it failed (the
    job's success stands: `launcher report RUN_DIR` rebuilds it). ``slurm_job_id``: the job runs
    inside a Slurm allocation (`launcher run` under salloc): its accounting so far goes in too."""
    from launcher.report import write_reports
    from launcher.train.trackers import report_to_trackers

    run = Path(run_dir)
    if slurm_job_id:
        from launcher.errors import JobError
        from launcher.execute.slurm import write_accounting

        try:
            write_accounting(run, slurm_job_id)
        except (JobError, OSError) as e:
            warn(f"launcher: sacct: {e}; the report counts the trainer's time only")
    try:
        report = write_reports(run)
    except Exception as e:  # noqa: BLE001 - the job succeeded; the report can be rebuilt
        warn(f"launcher: report failed: {e}; rebuild it with launcher report {run}")
        return None
    if report.status_detail.complete:
        from launcher.report.history import append

        append(run, report)  # the next plan's forecast scales from it; best effort
    try:
        for line in report_to_trackers(run, rundir.read_plan(run), report):
            warn(line)
    except Exception as e:  # noqa: BLE001 - the report stands without the trackers' summary
        warn(f"launcher: trackers: the report's figures were not added ({type(e).__name__}: {e})")
    return report
