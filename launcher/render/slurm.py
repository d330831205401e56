"""The Slurm batch script, as a pure function of a Plan.

``render_sbatch(plan, run_dir)`` fills ``launcher/templates/job.sbatch.j2`` (slurm/examples/ holds
scripts rendered from it, for users to read). Quoting rules:

- ``#SBATCH --flag=value``: every value ``shlex.quote``d, flags in a fixed order (sbatch parses
  quotes on #SBATCH lines like a shell, but expands nothing);
- the body: every value that comes from the job (run dir, env values, the python path) is a
  single-quoted literal; only the script's own expressions (``$RUN_DIR``, ``$HEAD:$PORT``,
  ``$SLURM_JOB_ID``...) are double-quoted so that they expand (``shell_word``);
- ``cluster.slurm.setup`` lines are the user's own shell code and are emitted verbatim;
- a newline in any value that reaches the script is an error (it would start a new #SBATCH line
  or a new command): ``JobError`` naming the field.
"""
from __future__ import annotations

import re
import shlex
import time
from functools import lru_cache
from typing import Optional, Sequence

from launcher import rundir
from launcher.errors import JobError
from launcher.plan import Plan
from launcher.render.torchrun import TRAIN_MODULE_ARGV, default_torchrun, render_env, render_torchrun_argv

TEMPLATE = "job.sbatch.j2"
PORT_BASE, PORT_SPAN = 20000, 20000  # rendezvous port = PORT_BASE + job id % PORT_SPAN

# The script's own shell expressions: double-quoted (they must expand), everything else single-quoted.
SHELL_EXPRESSIONS = frozenset({"$RUN_DIR", "$HEAD:$PORT", "$SLURM_JOB_ID", "$SLURM_NODEID", "$SLURM_NNODES"})

_BAD_CHARS = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def shell_word(arg: str) -> str:
    """One argv word for bash: the script's known expressions double-quoted (they expand, and
    stay one word), any other value a single-quoted literal."""
    if arg in SHELL_EXPRESSIONS:
        return f'"{arg}"'
    return shlex.quote(arg)


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shell_word(a) for a in argv)


def check_one_line(field: str, value: str) -> str:
    for ch, name in _BAD_CHARS.items():
        if ch in value:
            raise JobError(f"{field}: contains {name} ({value!r}); values written into job.sbatch must be one line")
    return value


def sbatch_flag(key: str, value: object = True) -> str:
    """``#SBATCH --key=value`` with the value shlex-quoted; ``True`` gives a bare flag."""
    if value is True:
        return f"#SBATCH --{key}"
    return f"#SBATCH --{key}={shlex.quote(str(value))}"


def _extra_sbatch_line(field: str, line: str) -> str:
    """A user's extra #SBATCH option: ``--key=value`` gets its value quoted; other forms
    (``--exclusive``, ``-p gpu``) are passed as written."""
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("-"):
        raise JobError(f"{field}: {line!r} is not an sbatch option; write it as --key=value")
    m = re.fullmatch(r"(--[A-Za-z][A-Za-z0-9-]*)=(.*)", text, flags=re.S)
    if m:
        return f"#SBATCH {m.group(1)}={shlex.quote(m.group(2))}"
    return f"#SBATCH {text}"


def _output_pattern(run_dir: str, name: str) -> str:
    """RUN_DIR/logs/``name`` (``{job_id}`` becomes Slurm's %j). '%' starts a Slurm filename
    pattern (%j, %x...): a literal one in the path must be '%%'."""
    return str(rundir.RunDir(run_dir.replace("%", "%%")).logs / name.format(job_id="%j"))


def render_sbatch_header(plan: Plan, run_dir: str) -> list[str]:
    """The #SBATCH lines, in a fixed order (then the job's extra_sbatch lines as given)."""
    s = plan.job.cluster.slurm
    f = "cluster.slurm"
    for key in ("job_name", "partition", "account", "qos", "time", "mem", "constraint", "gres"):
        if getattr(s, key) is not None:
            check_one_line(f"{f}.{key}", str(getattr(s, key)))
    job_name = s.job_name or plan.job.name
    check_one_line("name" if not s.job_name else f"{f}.job_name", job_name)

    lines = [
        sbatch_flag("job-name", job_name),
        sbatch_flag("nodes", plan.nodes),
        sbatch_flag("ntasks-per-node", 1),  # one torchrun per node; it starts the ranks
    ]
    if plan.device == "cuda":
        lines.append(sbatch_flag("gres", s.gres) if s.gres
                     else sbatch_flag("gpus-per-node", plan.procs_per_node))
    for key in ("cpus_per_task", "mem", "time", "partition", "account", "qos", "constraint"):
        if getattr(s, key) is not None:
            lines.append(sbatch_flag(key.replace("_", "-"), getattr(s, key)))
    if s.exclusive:
        lines.append(sbatch_flag("exclusive"))
    lines += [
        sbatch_flag("output", _output_pattern(run_dir, rundir.SLURM_OUT)),
        sbatch_flag("error", _output_pattern(run_dir, rundir.SLURM_ERR)),
        # a requeued job reopens its logs: append, or the first attempt's log is lost
        sbatch_flag("open-mode", "append"),
        sbatch_flag("requeue") if s.requeue else sbatch_flag("no-requeue"),
        # B: only the batch shell gets it (NCCL can swallow USR1 in the ranks)
        sbatch_flag("signal", f"B:USR2@{s.signal_grace_s}"),
    ]
    best = plan.forecast.best_start if plan.forecast else None
    if best is not None:
        check_one_line("report.intensity_forecast", best.source)
        # Slurm reads --begin in the controller's local time: this machine's zone is assumed to be it
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(best.at_epoch))
        lines += [f"# carbon-aware: {best.at} (UTC) gives the least forecast CO2 within {best.window_h:g} h "
                  f"({best.kg_co2e:.4g} kgCO2e against {best.kg_co2e_now:.4g} now; {best.source})",
                  sbatch_flag("begin", local)]
    for i, line in enumerate(s.extra_sbatch):
        lines.append(_extra_sbatch_line(f"{f}.extra_sbatch[{i}]", check_one_line(f"{f}.extra_sbatch[{i}]", line)))
    return lines


def render_sbatch_env(plan: Plan, run_dir: Optional[str] = None) -> dict[str, str]:
    """Environment exported by the script: render_env (threads per rank on CPU, NCCL error
    handling on GPUs) plus cluster.slurm.env (which wins, e.g. GLOO_SOCKET_IFNAME)."""
    extra = plan.job.cluster.slurm.env
    for k, v in extra.items():
        if not _ENV_NAME.match(k):
            raise JobError(f"cluster.slurm.env: {k!r} is not a valid environment variable name")
        check_one_line(f"cluster.slurm.env.{k}", str(v))
    return render_env(plan, {k: str(v) for k, v in extra.items()}, run_dir=run_dir)


@lru_cache(maxsize=1)
def _template():
    from launcher.render.jinja import template

    return template(TEMPLATE, autoescape=False)


def render_sbatch(
    plan: Plan,
    run_dir: str,
    *,
    python: str = "python3",
    extra_train_args: Sequence[str] = (),
) -> str:
    """The batch script for ``plan``, writing into ``run_dir`` (an absolute path, as the nodes
    see it). ``python`` is the interpreter on the nodes that has launcher installed."""
    check_one_line("run dir", run_dir)
    check_one_line("python", python)
    if not run_dir.startswith("/"):
        raise JobError(f"run dir: {run_dir!r} must be an absolute path (the nodes start elsewhere)")
    if "\\" in run_dir:
        raise JobError(f"run dir: {run_dir!r} contains a backslash, which turns off Slurm's %j in --output")
    s = plan.job.cluster.slurm
    setup = [check_one_line(f"cluster.slurm.setup[{i}]", line) for i, line in enumerate(s.setup)]
    for i, a in enumerate(extra_train_args):
        check_one_line(f"train argument {i}", a)

    argv = render_torchrun_argv(
        plan, "$RUN_DIR",
        rdzv_endpoint="$HEAD:$PORT", rdzv_id="$SLURM_JOB_ID", node_rank="$SLURM_NODEID", nnodes="$SLURM_NNODES",
        torchrun=default_torchrun(plan, python), extra_train_args=list(extra_train_args),
    )
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if s.cpus_per_task:
        # Slurm 22.05's srun does not inherit --cpus-per-task from sbatch: without this the
        # step (torchrun and all its ranks) is bound to one CPU where task/affinity or cgroup is on
        srun.append(f"--cpus-per-task={s.cpus_per_task}")
    env = render_sbatch_env(plan, run_dir)
    return _template().render(
        header=render_sbatch_header(plan, run_dir),
        run_dir=shlex.quote(run_dir),
        setup=setup,
        env=[f"export {k}={shlex.quote(v)}" for k, v in env.items()],
        port_base=PORT_BASE,
        port_span=PORT_SPAN,
        stop=rundir.STOP,
        preempted=rundir.PREEMPTED,
        completed=rundir.COMPLETED,
        sbatch=rundir.SBATCH,
        grace_s=s.signal_grace_s,
        requeue=s.requeue,
        step=_step_lines(srun, argv),
        fetch=render_fetch_line(plan, python),
        finish=shell_join([python, "-m", "launcher", "report", "$RUN_DIR", "--finish"]),
    )


def render_fetch_line(plan: Plan, python: str) -> str:
    """`launcher fetch "$RUN_DIR"` when the job names hub ids ("" otherwise): run by the batch shell
    on the first node before srun. It may use the network (HF_HUB_OFFLINE=0) unless
    cluster.slurm.env sets HF_HUB_OFFLINE; the ranks run with 1 (render_env)."""
    from launcher.sources import hub_refs

    if not hub_refs(plan.job):
        return ""
    offline = str(plan.job.cluster.slurm.env.get("HF_HUB_OFFLINE", "0"))
    return f"HF_HUB_OFFLINE={shlex.quote(offline)} " + shell_join([python, "-m", "launcher", "fetch", "$RUN_DIR"])


def _step_lines(srun: list[str], argv: list[str]) -> str:
    """srun, torchrun and the train command on three continued lines (easier to review)."""
    n = len(TRAIN_MODULE_ARGV)
    k = next((i for i in range(len(argv)) if argv[i:i + n] == TRAIN_MODULE_ARGV), len(argv))
    parts = [srun, argv[:k], argv[k:]]
    return " \\\n    ".join(shell_join(p) for p in parts if p)


def template_text() -> str:
    """The packaged template, as text."""
    from importlib.resources import files

    return (files("launcher") / "templates" / TEMPLATE).read_text()


__all__ = ["render_sbatch", "render_sbatch_header", "render_sbatch_env", "shell_word", "shell_join",
           "check_one_line", "sbatch_flag", "template_text"]
