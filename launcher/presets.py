"""The DeepSpeed presets shipped in ds_configs/, each made by `launcher ds-config` itself.

Regenerate after a change to the config builder: ``python -m launcher.presets`` (a test fails
when the files drift from what the tool writes).
"""
from __future__ import annotations

from pathlib import Path

# file name -> `launcher ds-config` arguments. Micro batch 1, world size 1: DeepSpeed rescales
# train_batch_size only when it is absent, so set the batch flags for your cluster instead.
DS_PRESETS: dict[str, list[str]] = {
    "zero0_bf16.json": ["--stage", "0", "--precision", "bf16"],
    "zero1_bf16.json": ["--stage", "1", "--precision", "bf16"],
    "zero2_bf16.json": ["--stage", "2", "--precision", "bf16"],
    "zero3_bf16.json": ["--stage", "3", "--precision", "bf16"],
    "zero2_offload_cpu_bf16.json": ["--stage", "2", "--offload-optimizer", "cpu", "--precision", "bf16"],
    "zero3_offload_cpu_bf16.json": ["--stage", "3", "--offload-optimizer", "cpu", "--offload-params", "cpu",
                                    "--precision", "bf16"],
    "zero3_offload_nvme_bf16.json": ["--stage", "3", "--offload-optimizer", "nvme", "--offload-params", "nvme",
                                     "--nvme-path", "/local_nvme", "--precision", "bf16"],
}

DS_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "ds_configs"


def regenerate(out_dir: Path = DS_CONFIGS_DIR) -> list[Path]:
    from click.testing import CliRunner

    from launcher.cli import cli

    written = []
    for name, args in DS_PRESETS.items():
        target = out_dir / name
        res = CliRunner().invoke(cli, ["ds-config", *args, "--output", str(target)])
        if res.exit_code != 0:
            raise SystemExit(f"{name}: launcher ds-config failed: {res.output}")
        written.append(target)
    return written


if __name__ == "__main__":
    for p in regenerate():
        print(f"wrote {p}")
