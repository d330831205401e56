"""The Slurm output parsers, on outputs recorded from the test cluster (Slurm 22.05, two nodes
n1 and n2, 2026-11-29) with `sbatch --parsable`, `scontrol show job -o` and
`sacct -X -n -P -o JobID,State,NodeList,Elapsed,ExitCode`. The job name is hostile on purpose:
it holds spaces, quotes, '=' and a fake `UserId=` field."""
from __future__ import annotations

import pytest

from launcher.errors import JobError
from launcher.execute.slurm import is_final, parse_sacct, parse_sbatch_parsable, parse_scontrol_job

SCONTROL_RUNNING = (
    "JobId=2 JobName=a b=c 'q' UserId=x UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 "
    "Nice=0 Account=root QOS=normal JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=365-00:00:00 TimeMin=N/A "
    "SubmitTime=2026-11-29T04:57:06 EligibleTime=2026-11-29T04:57:06 AccrueTime=2026-11-29T04:57:06 "
    "StartTime=2026-11-29T04:57:06 EndTime=2027-11-29T04:57:06 Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
    "LastSchedEval=2026-11-29T04:57:06 Scheduler=Backfill Partition=debug AllocNode:Sid=localhost:1139 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=n[1-2] BatchHost=n1 NumNodes=2 NumCPUs=2 NumTasks=2 "
    "CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=2,node=2,billing=2 Socks/Node=* NtasksPerN:B:S:C=1:0:*:* "
    "CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 "
    "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/rec/j.sh WorkDir=/tmp/rec "
    "StdErr=/tmp/rec/o-2.out StdIn=/dev/null StdOut=/tmp/rec/o-2.out Power= "
)
SCONTROL_PENDING_REQUEUED = (  # a job that requeued itself, waiting out Slurm's BeginTime delay
    "JobId=5 JobName=demo UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Nice=0 Account=root "
    "QOS=normal JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-29T04:58:09 "
    "EligibleTime=2026-11-29T04:58:20 AccrueTime=2026-11-29T04:58:20 StartTime=2026-11-29T04:58:20 "
    "EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-29T04:58:06 "
    "Scheduler=Main Partition=debug AllocNode:Sid=localhost:1139 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList= NumNodes=2 NumCPUs=2 NumTasks=2 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=2,mem=8000M,node=2,billing=2 Socks/Node=* NtasksPerN:B:S:C=1:0:*:* CoreSpec=* MinCPUsNode=1 "
    "MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=/tmp/rec/k.sh WorkDir=/tmp/rec StdErr=/tmp/rec/k-5.out "
    "StdIn=/dev/null StdOut=/tmp/rec/k-5.out Power= "
)
SACCT_COMPLETED = "2|COMPLETED|n[1-2]|00:00:05|0:0\n"
SACCT_CANCELLED = "3|CANCELLED by 0|None assigned|00:00:00|0:0\n"


def test_sbatch_parsable_job_id_with_and_without_cluster():
    assert parse_sbatch_parsable("2\n") == "2"
    assert parse_sbatch_parsable("17;cluster_a\n") == "17"
    assert parse_sbatch_parsable("sbatch: warning: something\n42\n") == "42"
    with pytest.raises(JobError, match="could not read a job id"):
        parse_sbatch_parsable("sbatch: error: Batch job submission failed\n")


def test_scontrol_fields_of_a_running_job_with_a_hostile_name():
    info = parse_scontrol_job(SCONTROL_RUNNING.strip(), "2")
    assert info == {"job_id": "2", "state": "RUNNING", "reason": "None", "nodes": "n[1-2]",
                    "elapsed": "00:00:02", "exit_code": "0:0", "restarts": 0, "source": "scontrol"}
    assert parse_scontrol_job(SCONTROL_RUNNING.strip(), "3") is None, "another job's line"


def test_scontrol_pending_after_requeue_has_no_nodes():
    info = parse_scontrol_job(SCONTROL_PENDING_REQUEUED.strip(), "5")
    assert (info["state"], info["reason"], info["nodes"], info["restarts"]) == ("PENDING", "BeginTime", None, 1)
    assert not is_final(info["state"])


def test_sacct_completed_and_cancelled():
    done = parse_sacct(SACCT_COMPLETED, "2")
    assert (done["state"], done["nodes"], done["elapsed"], done["source"]) == ("COMPLETED", "n[1-2]", "00:00:05", "sacct")
    cancelled = parse_sacct(SACCT_CANCELLED, "3")
    assert (cancelled["state"], cancelled["nodes"]) == ("CANCELLED", None)  # "CANCELLED by 0", no nodes
    assert is_final(done["state"]) and is_final(cancelled["state"])
    assert parse_sacct(SACCT_COMPLETED, "4") is None


# `sacct -j 4 -D -X -n -P -o JobID,State,Start,End,ElapsedRaw,AllocTRES,NNodes` of a job that
# requeued itself once (recorded on the test cluster), and a GPU line as a GPU cluster prints it
SACCT_REQUEUED = ("4|REQUEUED|2026-11-29T04:57:21|2026-11-29T04:57:24|3|billing=2,cpu=2,node=2|2\n"
                  "4|COMPLETED|2026-11-29T04:57:36|2026-11-29T04:57:39|3|billing=2,cpu=2,node=2|2\n")
SACCT_GPU = "77|COMPLETED|2026-01-01T00:00:00|2026-01-01T01:00:00|3600|billing=16,cpu=64,gres/gpu=16,mem=1T,node=2|2\n"


def test_sacct_attempts_of_a_requeued_job_and_gpus_from_alloctres():
    from launcher.execute.slurm import parse_sacct_attempts

    a = parse_sacct_attempts(SACCT_REQUEUED, "4")
    assert [(x["state"], x["elapsed_s"], x["gpus"], x["nodes"]) for x in a] == [("REQUEUED", 3, 0, 2),
                                                                                 ("COMPLETED", 3, 0, 2)]
    g = parse_sacct_attempts(SACCT_GPU, "77")
    assert (g[0]["gpus"], g[0]["elapsed_s"]) == (16, 3600)
    assert parse_sacct_attempts(SACCT_GPU, "78") == []
