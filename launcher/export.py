"""`launcher export`: a finished run's model in the form the Hugging Face Hub expects, with a model
card that states what training it cost.

* a LoRA run: the adapter alone (``adapter_model.safetensors`` + ``adapter_config.json`` naming the
  base model, what peft loads), or with ``merge`` the base with the adapter merged in (peft's
  ``merge_and_unload``); a full fine-tune: its final model;
* models as sharded safetensors (``save_pretrained(max_shard_size=...)``), cast to ``dtype``
  (default: the job's model.dtype; an adapter stays as trained unless asked), with the tokenizer;
* ``README.md``: the card. Metadata: ``base_model``, ``datasets`` (hub ids only: the Hub refuses
  anything else), ``library_name`` (peft for an adapter, transformers otherwise) and
  ``co2_eq_emissions`` (grams, CodeCarbon, fine-tuning, where, on what); body: the training facts
  from the run's report (steps, tokens, final losses, tokens/s, energy, cost).

Everything is written into a temporary folder next to the output, then renamed into place: an
export is whole or absent. torch, transformers, peft and huggingface_hub are imported inside the
functions.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher import rundir
from launcher.errors import JobError

if TYPE_CHECKING:
    from launcher.rundir.report_file import Job, Report

DEFAULT_MAX_SHARD_SIZE = "5GB"
TRAINING_TYPE = "fine-tuning"  # the Hub's co2_eq_emissions.training_type for anything not trained from scratch


@dataclass(frozen=True)
class Export:
    path: Path
    kind: str  # adapter, merged or full
    dtype: Optional[str]  # None: an adapter as trained
    base_model: Optional[str]  # the card's base_model (a hub id), None when the base is local
    files: tuple[str, ...]


def default_output(run_dir: Path, kind: str) -> Path:
    return rundir.RunDir(run_dir).export / kind


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JobError(f"--output: {out} already exists and is not an empty folder; choose a new one, or remove it")


_SIZE_UNITS = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12, "KIB": 2 ** 10, "MIB": 2 ** 20,
               "GIB": 2 ** 30, "TIB": 2 ** 40}


def shard_bytes(size: str) -> int:
    """``5GB`` (decimal units), ``2GiB`` (binary) as bytes, for save_pretrained's max_shard_size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*", size, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise JobError(f"--max-shard-size: {size!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def _publishable(folder: Path) -> None:
    """Files readable as the umask allows (some writers create them 0600, as temporary files)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o666 & ~mask)


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def hub_ids(plan, base_model: Optional[str]) -> tuple[Optional[str], list[str]]:
    """(base_model, datasets) for the card's metadata: hub ids only, since the Hub refuses a
    card naming anything else; ``base_model`` given by the user wins."""
    from launcher.sources import hub_refs

    refs = {r.field: r.repo_id for r in hub_refs(plan.job)}
    return base_model or refs.get("model.path"), [refs["data.path"]] if "data.path" in refs else []


def _write_adapter(final: Path, tmp: Path, base: str, dtype: Optional[str]) -> None:
    """The adapter as peft saves it, its config naming ``base`` (the hub id, or the local folder
    the run trained from) rather than the folder of this machine's cache."""
    from safetensors.torch import load_file, save_file

    (weights, config_file), (tmp_weights, tmp_config) = rundir.adapter_files(final), rundir.adapter_files(tmp)
    tensors = load_file(str(weights))
    if dtype:
        tensors = {k: v.to(_torch_dtype(dtype)) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    if (final / "config.json").is_file():  # a classifier's classes (launcher.train.checkpoint.save_final)
        shutil.copy2(final / "config.json", tmp / "config.json")
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_base(plan, final: Path, dtype: str):
    """The base model a run's adapter in ``final`` applies to, from where the run loaded it: a
    causal LM, or (classification) a sequence classifier with the classes the run saved beside
    the adapter (its head comes from the adapter)."""
    from transformers import AutoConfig

    from launcher.sources import job_paths
    from launcher.train.model import model_class

    path = job_paths(plan.job).model
    trust = plan.job.model.trust_remote_code
    kw = {}
    if plan.job.train.task == "classification":
        kw["config"] = AutoConfig.from_pretrained(str(final), trust_remote_code=trust)
    return model_class(plan.job.train.task).from_pretrained(path, dtype=_torch_dtype(dtype), trust_remote_code=trust,
                                                            **kw)


def merged_model(plan, final: Path, dtype: str):
    """The base model (from where the run loaded it) with the run's adapter merged in, in ``dtype``
    (merged in fp32 when the export is fp32, else in ``dtype``, as the adapter is applied in training).
    A classifier's trained head (peft's modules_to_save) replaces the base's."""
    from peft import PeftModel

    base = load_base(plan, final, dtype)
    model = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    return model.to(_torch_dtype(dtype))


def export_run(run_dir, *, merge: bool = False, dtype: Optional[str] = None, output=None,
               max_shard_size: str = DEFAULT_MAX_SHARD_SIZE, base_model: Optional[str] = None) -> Export:
    """Export the finished run at ``run_dir`` (see the module docstring); returns what was written."""
    from launcher.report import read_or_build_report

    run = rundir.require_run_dir(run_dir).resolve()
    plan = rundir.read_plan(run)
    final = rundir.RunDir(run).final
    if not rundir.RunDir(run).completed.exists() or not final.is_dir():
        raise JobError(f"{run}: the run has not finished (no {rundir.COMPLETED} marker and {rundir.FINAL}/ model); "
                       f"resume it with launcher run {run}, then export it")
    lora = plan.job.train.method == "lora"
    kind = ("merged" if merge else "adapter") if lora else "full"
    if kind != "adapter":
        dtype = dtype or plan.job.model.dtype
    out = Path(output).expanduser().resolve() if output else default_output(run, kind)
    _check_output(out)
    shard = shard_bytes(max_shard_size)
    report = read_or_build_report(run)
    base_id, datasets = hub_ids(plan, base_model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_model(plan, final, tmp, kind, dtype, shard, base_id)
        rundir.model_card(tmp).write_text(render_card(plan, report, kind=kind, dtype=dtype, base_model=base_id,
                                            datasets=datasets))
        _publishable(tmp)
        files = tuple(sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
        _check_output(out)  # still free: nothing else wrote there meanwhile
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(out, kind, dtype, base_id, files)


def _write_model(plan, final: Path, tmp: Path, kind: str, dtype: Optional[str], max_shard_size: int,
                 base_id: Optional[str]) -> None:
    """The weights (adapter, merged or full) and the tokenizer the run saved with them."""
    from transformers import AutoTokenizer

    from launcher.sources import job_paths
    from launcher.train.model import model_class

    trust = plan.job.model.trust_remote_code
    if kind == "adapter":
        _write_adapter(final, tmp, base_id or job_paths(plan.job).model, dtype)
    else:
        model = (merged_model(plan, final, dtype) if kind == "merged" else
                 model_class(plan.job.train.task).from_pretrained(str(final), dtype=_torch_dtype(dtype),
                                                                  trust_remote_code=trust))
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(final), trust_remote_code=trust).save_pretrained(str(tmp))


# --------------------------------------------------------------------------- the model card


def _hardware(job: "Job") -> str:
    what = job.accelerator or job.device or "unknown"
    if job.device == "cpu":
        what = f"{what} (CPU)"
    nodes = job.nodes or 1
    return f"{job.world_size} x {what}" + (f" on {nodes} nodes" if nodes > 1 else "")


def co2_metadata(report: "Report") -> Optional[dict]:
    """The card's co2_eq_emissions: grams (the report's kgCO2e x 1000), CodeCarbon with its measured
    or estimated label, fine-tuning, the country (and region) of the grid, the devices."""
    e = report.energy
    if not e.available or e.emissions_kg is None:
        return None
    where = ", ".join(x for x in (e.country_iso_code, e.region) if x)
    return {"emissions": e.emissions_kg * 1000.0, "source": f"CodeCarbon ({e.total_label or 'estimated'})",
            "training_type": TRAINING_TYPE, "geographical_location": where or "unknown",
            "hardware_used": _hardware(report.job)}


def training_rows(plan, report: "Report") -> list[tuple[str, str]]:
    """The card's training facts, from the report (what ran) and the plan (what was asked)."""
    from launcher.report.format import (fmt_dur, fmt_kwh, fmt_money, fmt_num, fmt_pct, forgetting_text, replay_text,
                                        strategy_label)

    job, t, loss, e, c, spec = report.job, report.throughput, report.loss, report.energy, report.cost, plan.job
    if spec.train.method == "lora":
        lo = spec.train.lora
        target = lo.target_modules if isinstance(lo.target_modules, str) else ", ".join(lo.target_modules)
        method = f"LoRA (r {lo.r}, alpha {lo.alpha:g}, dropout {lo.dropout:g}, on {target})"
    else:
        method = "full fine-tuning"
    rows = [
        ("method", method),
        *([("task", "sequence classification: " + ", ".join(_class_names(plan, report)))]
          if spec.train.task == "classification" else []),
        ("data", f"{spec.data.path} ({spec.data.format}, max_seq_len {spec.data.max_seq_len}"
                 f"{', packed' if spec.data.packing else ''})"),
        ("parallelism", f"{strategy_label(job)}, {job.world_size} x {job.device} on {job.nodes} node(s)"),
        ("precision", str(spec.model.dtype)),
        ("batch", f"{plan.global_batch_size} rows per step (micro {plan.micro_batch_size} x accumulation "
                  f"{plan.grad_accum_steps} x {plan.world_size} ranks)"),
        ("optimizer", f"AdamW, lr {spec.train.lr:g} ({spec.train.lr_scheduler}, warmup {spec.train.warmup_ratio:.0%}), "
                      f"weight decay {spec.train.weight_decay:g}"),
        ("steps", f"{fmt_num(t.steps)} of {fmt_num(job.planned_steps)}"),
        ("tokens", fmt_num(t.tokens)),
        ("final train loss", fmt_num(loss.last_train_loss, 4)),
        ("final eval loss", fmt_num(loss.last_eval_loss, 4)),
        *([("eval accuracy", f"{fmt_pct(loss.first_accuracy)} before, {fmt_pct(loss.last_accuracy)} after")]
          if spec.train.task == "classification" and loss.last_accuracy is not None else []),
        *([("eval macro F1", f"{fmt_num(loss.first_f1_macro, 3)} before, {fmt_num(loss.last_f1_macro, 3)} after")]
          if loss.last_f1_macro is not None else []),
        *([("forgetting", forgetting_text(report.forgetting) + f" ({fmt_num(report.forgetting.tokens)} tokens of "
                          f"{report.forgetting.data})")] if forgetting_text(report.forgetting) else []),
        *([("replay", replay_text(job))] if job.replay_rows_per_step else []),
        ("throughput", f"{fmt_num(t.tokens_per_s)} tokens/s ({fmt_num(t.tokens_per_s_per_device)} per device)"),
        ("training time", fmt_dur(t.wall_time_s)),
    ]
    if e.available:
        rows.append(("energy", f"{fmt_kwh(e.energy_kwh.total)} ({e.total_label}, PUE {e.pue})"))
        rows.append(("emissions", f"{fmt_num((e.emissions_kg or 0.0) * 1000.0)} gCO2e ({e.country_iso_code} grid)"))
        if e.hourly is not None and e.hourly.available:
            rows.append(("emissions, hours run", f"{fmt_num(e.hourly.kg_co2e * 1000.0)} gCO2e at the hourly "
                                                 f"intensity of {e.hourly.start} to {e.hourly.end}"))
    else:
        rows.append(("energy", "not measured"))
    rows.append(("cost", fmt_money(c.total, c.currency) if c.available
                 else "n/a (no prices in the job's report section)"))
    if c.offset is not None:
        rows.append(("offset", f"{fmt_money(c.offset.cost, c.currency)} to offset {fmt_num(c.offset.tonnes_co2e)} "
                               f"tCO2e at {fmt_money(c.offset.price_per_tonne, c.currency)} per tonne"))
    return rows


def _class_names(plan, report: "Report") -> list[str]:
    return list(report.job.labels or plan.job.data.labels or ["(classes of the data)"])


def _classifier_use(kind: str) -> list[str]:
    if kind == "adapter":  # the head is in the adapter (peft's modules_to_save), the classes in config.json
        return ["from peft import PeftConfig, PeftModel",
                "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer", "",
                'config = AutoConfig.from_pretrained("PATH_OR_HUB_ID")  # the classes: config.id2label',
                'base_id = PeftConfig.from_pretrained("PATH_OR_HUB_ID").base_model_name_or_path',
                "base = AutoModelForSequenceClassification.from_pretrained(base_id, config=config)",
                'model = PeftModel.from_pretrained(base, "PATH_OR_HUB_ID")',
                'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")']
    return ["from transformers import pipeline", "",
            'classify = pipeline("text-classification", model="PATH_OR_HUB_ID")',
            'classify("some text")  # [{"label": ..., "score": ...}]']


def render_card(plan, report: "Report", *, kind: str, dtype: Optional[str], base_model: Optional[str],
                datasets: list[str]) -> str:
    """README.md: YAML metadata the Hub reads (huggingface_hub.ModelCardData) and the facts."""
    from huggingface_hub import ModelCardData

    from launcher.report.units import md_cell

    spec = plan.job
    data = ModelCardData(
        base_model=base_model, datasets=datasets or None, library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-classification" if spec.train.task == "classification" else "text-generation",
        tags=["launcher", "lora" if spec.train.method == "lora" else "full-fine-tuning",
              "deepspeed" if plan.strategy == "zero" else "fsdp"],
        co2_eq_emissions=co2_metadata(report),
    )
    what = {"adapter": "a LoRA adapter", "merged": "a LoRA adapter merged into its base model",
            "full": "a fully fine-tuned model"}[kind]
    base = f"`{base_model}`" if base_model else f"`{spec.model.path}` (a local model: no hub id)"
    lines = [f"# {spec.name}", "", f"{what[0].upper()}{what[1:]} ({dtype or 'as trained'}), fine-tuned from {base} "
             f"with launcher.", "", "## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {md_cell(v)} |" for k, v in training_rows(plan, report)]
    lines += ["", "Energy and emissions are CodeCarbon's, counted once per node; the cost is the job's prices "
              "(report section) times the device-hours and kWh.", "", "## Use", "", "```python"]
    if spec.train.task == "classification":
        lines += _classifier_use(kind)
    elif kind == "adapter":
        lines += ["from peft import AutoPeftModelForCausalLM", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")']
    lines.append("```")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
