from __future__ import annotations

import json
import os
from pathlib import Path

import click

from launcher.cli._common import job_argument, load_job_or_default, overrides_argument


def resolve_device(spec, requested: str | None = None, *, probe: bool = False) -> str:
    """cluster.device (or --device) with "auto" resolved. ``probe`` looks at this machine's
    GPUs (imports torch: only `run` and `train` do that); otherwise auto means the cluster's GPUs."""
    dev = requested or spec.cluster.device
    if dev != "auto":
        return dev
    if not probe:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_model_info(model_path: str):
    """ModelInfo from a local model folder's config.json, or None (hub ids, demo names)."""
    from launcher.plan import read_model_info

    cfg = Path(model_path) / "config.json"
    if model_path.startswith("demo:"):
        from launcher.demo import demo_model_config

        return read_model_info(demo_model_config())
    if cfg.is_file():
        try:
            return read_model_info(json.loads(cfg.read_text()))
        except json.JSONDecodeError as e:
            from launcher.errors import JobError

            raise JobError(f"{cfg}:{e.lineno}: not valid JSON ({e.msg})") from None
    return None


def format_plan(plan) -> str:
    job = plan.job
    lines = [
        f"job            {job['name']}",
        f"model          {job['model']['path']} ({plan.dtype}, {job['train']['method']})",
        f"data           {job['data']['path']} ({job['data']['format']}, max_seq_len {plan.seq_len}, "
        f"{'packed' if job['data']['packing'] else 'padded'})",
        f"device         {plan.device} ({plan.backend}), {plan.nodes} node(s) x {plan.procs_per_node} = world size {plan.world_size}",
        f"batch          micro {plan.micro_batch_size} x accum {plan.grad_accum_steps} x world {plan.world_size} "
        f"= global {plan.global_batch_size} rows = {plan.tokens_per_step} tokens per step",
    ]
    if plan.steps_per_epoch is not None:
        lines.append(f"steps          {plan.steps_per_epoch} per epoch, {plan.total_steps} in all")
    elif plan.total_steps is not None:
        lines.append(f"steps          {plan.total_steps} (max_steps)")
    else:
        lines.append("steps          known once the data is tokenized (launcher run)")
    if plan.strategy == "zero":
        z = plan.ds_config["zero_optimization"]
        off = [f"{k.split('_')[1]}->{v['device']}" for k, v in z.items() if k.startswith("offload")]
        lines.append(f"strategy       DeepSpeed ZeRO-{plan.zero_stage}" + (f", offload {', '.join(off)}" if off else ""))
    else:
        f = plan.fsdp
        lines.append(f"strategy       FSDP2 (fully_shard), param {f['param_dtype']}, reduce {f['reduce_dtype']}, "
                     f"reshard_after_forward={f['reshard_after_forward']}, cpu_offload={f['cpu_offload']}")
    if plan.model:
        m = plan.model
        lines.append(f"model shape    {m['architecture']}: {m['n_params'] / 1e6:.2f}M params, hidden {m['hidden_size']}, "
                     f"{m['n_layers']} layers")
    if plan.memory_gib_per_device:
        mem = plan.memory_gib_per_device
        lines.append(f"memory/device  {mem['total']} GiB model states (params {mem['params']}, grads {mem['grads']}, "
                     f"optimizer {mem['optimizer']}), activations not included")
    lines.append("derived:")
    lines += [f"  - {d}" for d in plan.derivations]
    if plan.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in plan.notes]
    if plan.ds_config is not None:
        lines.append("ds_config.json:")
        lines += ["  " + ln for ln in json.dumps(plan.ds_config, indent=2, sort_keys=True).splitlines()]
    return "\n".join(lines)


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
    from launcher.plan import plan_job

    spec = load_job_or_default(job_file, overrides)
    if with_data:
        import tempfile

        from launcher.cli.run import prepare_run

        with tempfile.TemporaryDirectory(prefix="launcher-plan-") as tmp:
            _, p = prepare_run(spec, device=resolve_device(spec, device), nproc=None, run_dir=Path(tmp))
    else:
        p = plan_job(spec, device=resolve_device(spec, device), model_info=local_model_info(spec.model.path),
                     cpu_count=os.cpu_count())
    click.echo(json.dumps(p.to_dict(), indent=2, sort_keys=True) if as_json else format_plan(p))
