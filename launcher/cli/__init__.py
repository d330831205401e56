"""The `launcher` command group. Subcommands load lazily (click's LazyGroup pattern), so
`launcher --help` imports none of torch, deepspeed, transformers, peft, datasets or codecarbon."""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

# name -> (module, attribute, one-line help shown by `launcher --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("launcher.cli.init", "init", "Write a commented starter job file."),
    "plan": ("launcher.cli.plan", "plan", "Resolve a job: batch arithmetic, engines, memory, forecast; what fits."),
    "ds-config": ("launcher.cli.ds_config", "ds_config", "Write a DeepSpeed ZeRO config with no 'auto' in it."),
    "run": ("launcher.cli.run", "run", "Fine-tune on this node with torchrun (default: the embedded demo job)."),
    "train": ("launcher.cli.train", "train", "Per-rank training entry point (started by torchrun)."),
    "slurm": ("launcher.cli.slurm", "slurm", "Render job.sbatch for a job and optionally submit it."),
    "k8s": ("launcher.cli.k8s", "k8s", "Render a Kubernetes TrainJob or JobSet for a job and optionally apply it."),
    "k8s-node": ("launcher.cli.k8s_node", "k8s_node", "Per-pod entry point of a Kubernetes run (the container command)."),
    "status": ("launcher.cli.jobs", "status", "Show state, nodes, last step and loss of runs."),
    "logs": ("launcher.cli.jobs", "logs", "Print (or follow) a run's logs."),
    "cancel": ("launcher.cli.jobs", "cancel", "Cancel a run's Slurm job or Kubernetes TrainJob/JobSet."),
    "report": ("launcher.cli.report", "report", "Report throughput, MFU, energy, CO2 and cost of runs."),
    "export": ("launcher.cli.export", "export", "Write a run's model (adapter or merged) with a model card."),
    "fetch": ("launcher.cli.fetch", "fetch", "Fetch a job's hub model and data set into the local cache."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        mod, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(mod), attr)
        except ModuleNotFoundError as e:
            if e.name == mod:
                return None
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="launcher")
def cli() -> None:
    """Turn one job file into checked DeepSpeed/FSDP2 fine-tuning runs on torchrun or Slurm,
    and report what each job cost in throughput, money, kWh and CO2."""


def main() -> None:
    code = run_cli()
    if code:
        sys.exit(code)
    if "torch" in sys.modules:
        _exit_without_teardown()


def run_cli() -> int:
    """The command in sys.argv, to its exit code; bad input is its one line (exit 2). A rank that
    launcher.forkrun forked calls this, not :func:`main`: its agent waits for its return."""
    from launcher.errors import JobError

    try:
        cli.main(standalone_mode=False)
    except JobError as e:
        for line in e.lines:
            click.echo(f"error: {line}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.UsageError as e:  # one line too: the command, the problem, where the help is
        cmd = e.ctx.command_path if e.ctx else "launcher"
        msg = " ".join(ln.strip() for ln in e.format_message().splitlines() if ln.strip())
        click.echo(f"error: {cmd}: {msg} (see {cmd} --help)", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except SystemExit as e:  # a command's own sys.exit(code)
        if isinstance(e.code, str):
            click.echo(e.code, err=True)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _exit_without_teardown() -> None:
    """A command that imported torch (a rank, `launcher run`) and succeeded exits without the
    interpreter's teardown of torch, transformers and DeepSpeed: seconds per process on a small machine,
    after the work is done, on every run's path (the ranks', then torchrun's, then this one's).
    Everything launcher owns is closed by then (trackers, the energy child, the process group,
    run-directory files written atomically); the streams and logging are flushed here."""
    import logging
    import os

    from launcher.train.console import flush_streams

    logging.shutdown()
    flush_streams()
    os._exit(0)

