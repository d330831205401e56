"""The job file's documentation, generated from the spec (launcher/spec.py) so that neither can
drift from the code: every field's type, default, allowed values and ``description=``.

* ``render_reference()``: docs/job-reference.md, every section and field;
* ``render_starter(path)``: the commented starter `launcher init` writes: the values of
  ``STARTER`` (a 2-node, 8-GPU LoRA job), each key commented with its field's description.

Regenerate the reference after a change to the spec: ``python -m launcher.jobdoc`` (a test fails
when docs/job-reference.md drifts from what this writes). Imports only the spec: cheap.
"""
from __future__ import annotations

import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from launcher.spec import JobSpec

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "job-reference.md"

# The starter job: a LoRA fine-tune of a 1B model on 2 nodes x 8 GPUs with DeepSpeed ZeRO-3.
# Keys in the order written; a section in FLOW is written on one line.
STARTER: dict[str, Any] = {
    "name": "my-job",
    "output_dir": "runs",
    "model": {"path": "./models/llama-3.2-1b", "dtype": "bf16"},
    "data": {"path": "data/train.jsonl", "format": "instruction", "max_seq_len": 2048, "packing": True,
             "eval_fraction": 0.02},
    "train": {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
              "epochs": 1, "max_steps": None, "micro_batch_size": 4, "global_batch_size": 128, "lr": 2.0e-4,
              "warmup_ratio": 0.03, "lr_scheduler": "cosine", "activation_checkpointing": True,
              "save_every_steps": 500, "seed": 0},
    "parallel": {"strategy": "zero", "zero_stage": 3, "offload_optimizer": "none", "offload_params": "none"},
    "cluster": {"nodes": 2, "gpus_per_node": 8, "accelerator": "H100-SXM",
                "slurm": {"partition": None, "account": None, "time": "04:00:00", "setup": []}},
    "report": {"country_iso_code": "USA", "gpu_hour_price": 2.5, "currency": "USD", "energy_price_per_kwh": 0.12,
               "pue": 1.2},
}
# `launcher init --task classification`: a LoRA classifier (intent, sentiment, routing) of the same
# model on one 8-GPU node; the head is new and trained whole.
CLASSIFICATION_STARTER: dict[str, Any] = {
    "name": "my-classifier",
    "output_dir": "runs",
    "model": {"path": "./models/llama-3.2-1b", "dtype": "bf16"},
    "data": {"path": "data/train.jsonl", "format": "classification", "text_field": "text", "label_field": "label",
             "labels": None, "max_seq_len": 512, "truncate": True, "packing": False, "eval_fraction": 0.1},
    "train": {"task": "classification", "method": "lora",
              "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
              "epochs": 3, "max_steps": None, "micro_batch_size": 16, "global_batch_size": 128, "lr": 1.0e-4,
              "warmup_ratio": 0.06, "lr_scheduler": "linear", "save_every_steps": 500, "eval_every_steps": 200,
              "seed": 0},
    "parallel": {"strategy": "zero", "zero_stage": 2, "offload_optimizer": "none", "offload_params": "none"},
    "cluster": {"nodes": 1, "gpus_per_node": 8, "accelerator": "H100-SXM",
                "slurm": {"partition": None, "account": None, "time": "02:00:00", "setup": []}},
    "report": {"country_iso_code": "USA", "gpu_hour_price": 2.5, "currency": "USD", "energy_price_per_kwh": 0.12,
               "pue": 1.2},
}
STARTERS = {"causal_lm": STARTER, "classification": CLASSIFICATION_STARTER}
FLOW = {"train.lora"}
COMMENT_COLUMN = 38  # where inline comments start
WIDTH = 120  # longest starter line before a comment goes above its key

STARTER_HEADER = """\
# A launcher job. Check it with `launcher plan {path}`, run it with `launcher run {path}`,
# or submit it with `launcher slurm {path} --submit`. Any key can be overridden on the
# command line: `launcher plan {path} train.lr=1e-4 cluster.nodes=4`.
# Every key, its default and its allowed values: docs/job-reference.md.
"""


# --------------------------------------------------------------------------- reading the spec


def _section(annotation: Any):
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def fields(model: type[BaseModel] = JobSpec, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted path, field) of every field, depth first, in declaration order."""
    for name, info in model.model_fields.items():
        yield prefix + name, info
        sub = _section(info.annotation)
        if sub is not None:
            yield from fields(sub, f"{prefix}{name}.")


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else "value"
    if origin in (Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return f"[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    if _section(annotation) is not None:
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def allowed(info: FieldInfo) -> str:
    """Allowed values: a Literal's values (or another type of a union), and the bounds pydantic checks."""
    members = typing.get_args(info.annotation) if typing.get_origin(info.annotation) in (Union, types.UnionType) \
        else (info.annotation,)
    lits = [a for t in members if typing.get_origin(t) is Literal for a in typing.get_args(t)]
    others = [type_name(t) for t in members if typing.get_origin(t) is not Literal and t is not type(None)]
    parts = [" \\| ".join(f"`{v}`" for v in lits) + (f", or a {others[0]}" if others else "")] if lits else []
    bounds = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt", "min_length", "max_length")
              if getattr(m, k, None) is not None}
    parts += [f"{op} {bounds[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in bounds]
    lo, hi = bounds.get("min_length"), bounds.get("max_length")
    if lo is not None and lo == hi:
        parts.append(f"exactly {lo} characters")
    elif lo:
        parts.append(f"at least {lo} character{'s' if lo > 1 else ''}")
    return ", ".join(parts)


def yaml_value(value: Any) -> str:
    """A value as the starter writes it: YAML flow style, small floats as 2.0e-4."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str) and re.fullmatch(r"[\d:]+", value):
        return f'"{value}"'  # YAML 1.1 reads 12:00:00 as a number
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exp = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exp)}"
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def default_of(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


# --------------------------------------------------------------------------- the reference


def render_reference() -> str:
    """docs/job-reference.md: one table per section, in the spec's order."""
    out = ["# Job file reference", "",
           "<!-- Generated from launcher/spec.py by `python -m launcher.jobdoc`: edit the field descriptions "
           "there, then regenerate. -->", "",
           "A job is one YAML file of the sections below; every key is optional and takes its default. Any key "
           "can be overridden on the command line as `section.key=value` (`launcher plan job.yaml "
           "train.lr=1e-4`). `launcher init` writes a commented starter; `launcher plan` checks a job and "
           "reports every problem at once, with its path.", ""]
    sections: list[tuple[str, str, type[BaseModel]]] = [("", "Keys outside the sections.", JobSpec)]
    for path, info in fields():
        sub = _section(info.annotation)
        if sub is not None:
            sections.append((path, info.description or "", sub))
    for path, description, model in sections:
        out += [f"## `{path}`" if path else "## Top level", "", description, "",
                "| field | type | default | allowed | description |", "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            full = f"{path}.{name}" if path else name
            is_section = _section(info.annotation) is not None
            default = f"see [`{full}`](#{full.replace('.', '')})" if is_section else f"`{yaml_value(default_of(info))}`"
            desc = (info.description or "").replace("|", "\\|").replace("<", "\\<")  # <name> is no HTML tag
            out.append(f"| `{full}` | {type_name(info.annotation)} | {default} | {allowed(info)} | {desc} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the starter


def _with_comment(text: str, comment: str, indent: str) -> str:
    """``text  # comment`` from COMMENT_COLUMN on, or the comment wrapped on lines above ``text``."""
    line = text.ljust(COMMENT_COLUMN - 1) + f" # {comment}"
    if len(line) <= WIDTH:
        return line
    return "\n".join([f"{indent}# {c}" for c in textwrap.wrap(comment, WIDTH - len(indent) - 2)] + [text])


def _starter_lines(values: dict, model: type[BaseModel], prefix: str, indent: str) -> list[str]:
    lines = []
    for key, value in values.items():
        info = model.model_fields[key]
        sub, path = _section(info.annotation), prefix + key
        if sub is not None and path not in FLOW:
            lines.append(_with_comment(f"{indent}{key}:", info.description or "", indent))
            lines += _starter_lines(value, sub, path + ".", indent + "  ")
        else:
            lines += _with_comment(f"{indent}{key}: {yaml_value(value)}", info.description or "", indent).split("\n")
    return lines


def render_starter(path: str = "job.yaml", task: str = "causal_lm") -> str:
    """The commented starter job of `launcher init`: STARTER (CLASSIFICATION_STARTER for
    ``--task classification``), every key commented from the spec."""
    lines = STARTER_HEADER.format(path=path).splitlines()
    for key, value in STARTERS[task].items():
        info = JobSpec.model_fields[key]
        sub = _section(info.annotation)
        if sub is None:
            lines += _starter_lines({key: value}, JobSpec, "", "")
        else:
            lines += ["", _with_comment(f"{key}:", info.description or "", "")]
            lines += _starter_lines(value, sub, key + ".", "  ")
    return "\n".join(lines) + "\n"


def regenerate(path: Path = REFERENCE_PATH) -> Path:
    path.write_text(render_reference())
    return path


if __name__ == "__main__":
    print(f"wrote {regenerate()}")
