from __future__ import annotations

import click

from launcher.cli._common import job_argument, overrides_argument


@click.command("ds-config")
@job_argument
@overrides_argument
@click.option("--stage", type=click.IntRange(0, 3), default=None, help="ZeRO stage 0-3 (default 2).")
@click.option("--offload-optimizer", type=click.Choice(["none", "cpu", "nvme"]), default=None)
@click.option("--offload-params", type=click.Choice(["none", "cpu", "nvme"]), default=None, help="Stage 3 only.")
@click.option("--nvme-path", default=None, help="Folder for NVMe offload.")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="Default bf16.")
@click.option("--micro-batch", type=click.IntRange(min=1), default=None, help="Rows per GPU per forward (default 1).")
@click.option("--grad-accum", type=click.IntRange(min=1), default=None, help="Gradient accumulation steps.")
@click.option("--global-batch", type=click.IntRange(min=1), default=None, help="Rows per optimizer step.")
@click.option("--world-size", type=click.IntRange(min=1), default=None, help="GPUs in all (default 1).")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None,
              help="Model hidden size: bucket sizes derived as the Hugging Face integration does.")
@click.option("--lr", type=float, default=None, help="AdamW learning rate (default 2e-4).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="With a job file: plan for this device.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write here (default stdout).")
def ds_config(job_file, overrides, stage, offload_optimizer, offload_params, nvme_path, precision, micro_batch,
              grad_accum, global_batch, world_size, hidden_size, lr, device, output):
    """Write a DeepSpeed config with every value resolved (no "auto"), runnable by raw DeepSpeed.

    From flags, or from JOB_FILE (its parallel/train/cluster sections; flags then are errors,
    use key.sub=value overrides instead)."""
    from launcher.errors import JobError
    from launcher.plan import build_ds_config, resolve_batch
    from launcher.render.deepspeed import render_ds_config
    from launcher.rundir import write_atomic

    flags = dict(stage=stage, offload_optimizer=offload_optimizer, offload_params=offload_params,
                 nvme_path=nvme_path, precision=precision, micro_batch=micro_batch, grad_accum=grad_accum,
                 global_batch=global_batch, world_size=world_size, hidden_size=hidden_size, lr=lr)
    if job_file or overrides:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        if given:
            raise JobError(f"{', '.join(given)}: not used with a job file; override the job instead "
                           f"(for example parallel.zero_stage=3)")
        from launcher import prepare
        from launcher.cli._common import load_job_or_default

        spec = load_job_or_default(job_file, overrides)
        if spec.parallel.strategy != "zero":
            raise JobError(f"parallel.strategy: {spec.parallel.strategy!r} uses no DeepSpeed config; "
                           f"set parallel.strategy=zero")
        _, plan = prepare.plan_without_data(spec, prepare.resolve_device(spec, device, planning=True), probe=False,
                                            history=False)  # a config, no forecast to make
        cfg = plan.ds_config
    else:
        world = world_size or 1
        batch = resolve_batch(micro_batch, grad_accum, global_batch, world)
        cfg = build_ds_config(
            stage=2 if stage is None else stage, micro_batch_size=batch.micro_batch_size,
            grad_accum_steps=batch.grad_accum_steps, world_size=world, precision=precision or "bf16",
            offload_optimizer=offload_optimizer or "none", offload_params=offload_params or "none",
            nvme_path=nvme_path, hidden_size=hidden_size, lr=2e-4 if lr is None else lr,
        )
    text = render_ds_config(cfg)
    if output:
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
