from __future__ import annotations

import json

import click

from launcher.cli._common import job_argument, load_job_or_default, overrides_argument


def plan_rows(plan) -> list[tuple[str, str]]:
    """The plan as (label, value) rows for the terminal."""
    job = plan.job
    rows = [
        ("job", job.name),
        ("model", f"{job.model.path} ({plan.dtype}, {job.train.method})"),
        ("data", f"{job.data.path} ({job.data.format}, max_seq_len {plan.seq_len}, "
                 f"{'packed' if job.data.packing else 'padded'})"),
        ("device", f"{plan.device} ({plan.backend}), {plan.nodes} node(s) x {plan.procs_per_node} = "
                   f"world size {plan.world_size}"),
        ("batch", f"micro {plan.micro_batch_size} x accum {plan.grad_accum_steps} x world {plan.world_size} "
                  f"= global {plan.global_batch_size} rows = {plan.tokens_per_step} tokens per step"),
    ]
    if plan.steps_per_epoch is not None:
        rows.append(("steps", f"{plan.steps_per_epoch} per epoch, {plan.total_steps} in all"))
    elif plan.total_steps is not None:
        rows.append(("steps", f"{plan.total_steps} (max_steps)"))
    else:
        rows.append(("steps", "known once the data is tokenized (launcher run, or plan --with-data)"))
    if plan.strategy == "zero":
        z = plan.ds_config["zero_optimization"]
        off = [f"{k.split('_')[1]}->{v['device']}" for k, v in z.items() if k.startswith("offload")]
        rows.append(("strategy", f"DeepSpeed ZeRO-{plan.zero_stage}" + (f", offload {', '.join(off)}" if off else "")))
    else:
        f = plan.fsdp
        rows.append(("strategy", f"FSDP2 (fully_shard), param {f.param_dtype}, reduce {f.reduce_dtype}, "
                                 f"reshard_after_forward={f.reshard_after_forward}, cpu_offload={f.cpu_offload}"))
    if plan.model:
        m = plan.model
        trainable = f", {m.n_trainable_params:,} trainable" if m.n_trainable_params is not None else ""
        rows.append(("model shape", f"{m.architecture}: {m.n_params / 1e6:.2f}M params{trainable}, hidden "
                                    f"{m.hidden_size}, {m.n_layers} layers"))
    if plan.memory_gib_per_device:
        mem = plan.memory_gib_per_device
        rows.append(("memory/device", f"{mem.total} GiB model states (params {mem.params}, grads {mem.grads}, "
                                      f"optimizer {mem.optimizer}), activations not included"))
    return rows


def format_plan(plan) -> str:
    """The plan for people: a rich key/value table, the derivations, notes and the ds_config."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in plan_rows(plan):
        table.add_row(label, value)
    con = Console(file=io.StringIO(), width=200, color_system=None, highlight=False, emoji=False)
    con.print(table)
    lines = [*con.file.getvalue().splitlines(), "derived:"]
    lines += [f"  - {d}" for d in plan.derivations]
    if plan.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in plan.notes]
    if plan.ds_config is not None:
        lines.append("ds_config.json:")
        lines += ["  " + ln for ln in json.dumps(plan.ds_config, indent=2, sort_keys=True).splitlines()]
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@job_argument
@overrides_argument
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Plan for this device (default: cluster.device; auto means the cluster's GPUs).")
@click.option("--with-data", is_flag=True,
              help="Tokenize the data (as launcher run would) to show rows, steps per epoch and total steps.")
def plan(job_file, overrides, as_json, device, with_data):
    """Resolve JOB_FILE (default: the embedded demo job) with key.sub=value OVERRIDES and print
    world size, batch arithmetic, steps, engine settings and what was derived from what."""
    import os

    from launcher import prepare

    spec = load_job_or_default(job_file, overrides)
    dev = prepare.resolve_device(spec, device)
    if with_data:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="launcher-plan-") as tmp:
            p = prepare.plan_run(spec, dev, Path(tmp))
    else:
        _, p = prepare.plan_without_data(spec, dev, cpu_count=os.cpu_count())
    click.echo(json.dumps(p.to_dict(), indent=2, sort_keys=True) if as_json else format_plan(p))
