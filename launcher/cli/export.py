"""`launcher export`: a finished run's adapter, merged or full model with a model card."""
from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--merge", is_flag=True, help="LoRA runs: merge the adapter into the base model (peft merge_and_unload).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Weights' dtype (default: the job's model.dtype for a merged or full model; an adapter as trained).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default RUN_DIR/export/<adapter|merged|full>); it must not exist, or be empty.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard of a model.")
@click.option("--base-model", default=None,
              help="Hub id of the base model for the card (default: model.path when it is a hub id).")
def export(run_dir, merge, dtype, output, max_shard_size, base_model):
    """Write the model of the finished run RUN_DIR in Hugging Face format: the LoRA adapter alone, or
    merged into its base (--merge), or a full fine-tune's model, as safetensors with the tokenizer
    and a model card (README.md) giving the training's steps, tokens, losses, throughput, energy,
    emissions (co2_eq_emissions) and cost. Written to a temporary folder, then renamed into place."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    from launcher.export import export_run

    disable_progress_bars()  # one short process: its own lines are enough
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecations, not the user's
    done = export_run(run_dir, merge=merge, dtype=dtype, output=output, max_shard_size=max_shard_size,
                      base_model=base_model)
    weights = [f for f in done.files if f.endswith(".safetensors")]
    click.echo(f"exported {done.kind} ({done.dtype or 'as trained'}): {done.path}")
    click.echo(f"  {len(weights)} safetensors file(s), tokenizer, model card README.md")
    if merge and done.kind == "full":
        click.echo("note: a full fine-tune has no adapter to merge: its final model was exported", err=True)
    if done.base_model is None:
        click.echo("note: the card names no base_model (model.path is not a hub id): pass --base-model ORG/NAME "
                   "to name the model it came from", err=True)
