"""Preparation: from a validated job to a run directory on disk, between the CLI and the
executors. The CLI parses, calls these and prints.

    here.py      what this machine can run: device, bf16, NVMe's async I/O, trackers, RAM, attention
    planning.py  planning once: the plan before the data, the hub ids fetched, the rows counted, the
                 forecast's calibration and best start
    probe.py     this machine's CPU: matrix throughput and CodeCarbon's power, measured once
    launch.py    the launch files: engine config, torchrun's argv and environment, --hosts scripts, sbatch
    resume.py    a run directory's past: resume checks, start-over, stale markers, failed preflights
"""
from launcher.prepare.here import (  # noqa: F401
    resolve_device, check_device_here, bf16_problem, check_precision_here, async_io_buildable,
    check_nvme_buildable, check_nvme_here, check_trackers_here, node_ram_bytes, check_attention,
)
from launcher.prepare.planning import (  # noqa: F401
    with_procs, plan_without_data, fetch_hub, count_rows, plan_run, plan_before_data, plan_with_data,
    with_best_start,
)
from launcher.prepare.launch import (  # noqa: F401
    prestart_hint, local_launch_files, engine_files, host_names, hosts_launch_files, k8s_files, slurm_files,
)
from launcher.prepare.resume import (  # noqa: F401
    check_resume, clear_run_outputs, clear_stop_markers, preflight_failure, latest_run_dir,
)

__all__ = [
    "resolve_device", "check_device_here", "bf16_problem", "check_precision_here", "async_io_buildable",
    "check_nvme_buildable", "check_nvme_here", "check_trackers_here", "node_ram_bytes", "check_attention",
    "with_procs", "plan_without_data", "fetch_hub", "count_rows", "plan_run", "plan_before_data",
    "plan_with_data", "with_best_start", "prestart_hint", "local_launch_files", "engine_files", "host_names", "hosts_launch_files",
    "k8s_files", "slurm_files", "check_resume", "clear_run_outputs", "clear_stop_markers", "preflight_failure",
    "latest_run_dir",
]
