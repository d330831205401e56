from __future__ import annotations

from pathlib import Path

import click

STARTER = """\
# A launcher job. Check it with `launcher plan {path}`, run it with `launcher run {path}`,
# or submit it with `launcher slurm {path} --submit`. Any key can be overridden on the
# command line: `launcher plan {path} train.lr=1e-4 cluster.nodes=4`.
name: my-job
output_dir: runs                      # run directories go to runs/<name>-<id>/

model:
  path: ./models/llama-3.2-1b         # local folder, a hub id in the local cache, or demo:tiny-llama
  dtype: bf16                         # bf16 | fp16 | fp32

data:
  path: data/train.jsonl              # jsonl, json, parquet, csv or a saved dataset folder
  format: instruction                 # text | instruction (prompt/response) | chat (messages)
  max_seq_len: 2048
  packing: true                       # pack documents into full rows: no padding
  eval_fraction: 0.02

train:
  method: lora                        # lora | full
  lora: {{r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}}
  epochs: 1
  max_steps: null                     # stop earlier than the epochs would
  micro_batch_size: 4                 # rows per GPU per forward
  global_batch_size: 128              # rows per optimizer step; accumulation is derived:
                                      # global = micro x accum x world, checked exactly
  lr: 2.0e-4
  warmup_ratio: 0.03
  lr_scheduler: cosine                # cosine | linear | constant
  activation_checkpointing: true
  save_every_steps: 500
  seed: 0

parallel:
  strategy: zero                      # zero (DeepSpeed) | fsdp (PyTorch FSDP2)
  zero_stage: 3                       # 0-3
  offload_optimizer: none             # none | cpu | nvme
  offload_params: none                # none | cpu | nvme (stage 3)

cluster:
  nodes: 2
  gpus_per_node: 8
  slurm:                              # used by `launcher slurm`
    partition: null
    account: null
    time: "04:00:00"
    setup: []                         # lines run before launch, e.g. "module load cuda/12.4"

report:
  country_iso_code: USA               # grid carbon intensity for CodeCarbon
  gpu_hour_price: 2.5
  currency: USD
  energy_price_per_kwh: 0.12
  pue: 1.2
"""


@click.command()
@click.argument("path", required=False, default="job.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path, force):
    """Write a commented starter job file to PATH (default job.yaml)."""
    from launcher.errors import JobError
    from launcher.rundir import write_atomic

    if Path(path).exists() and not force:
        raise JobError(f"{path}: already exists; pass --force to overwrite it or choose another path")
    write_atomic(path, STARTER.format(path=path))
    click.echo(f"wrote {path}; next: launcher plan {path}")
