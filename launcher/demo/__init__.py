"""The embedded default job: tiny model, tokenizer and task, all built locally."""
from pathlib import Path

from launcher.demo.assets import (
    DemoAssets,
    build_arithmetic_data,
    build_tiny_llama,
    build_tokenizer,
    demo_model_config,
    ensure_demo_assets,
    exact_match_accuracy,
    resolve_data_path,
    resolve_model_path,
)

DEFAULT_JOB_PATH = Path(__file__).with_name("default_job.yaml")

__all__ = [
    "DEFAULT_JOB_PATH",
    "DemoAssets",
    "build_arithmetic_data",
    "build_tiny_llama",
    "build_tokenizer",
    "demo_model_config",
    "ensure_demo_assets",
    "exact_match_accuracy",
    "resolve_data_path",
    "resolve_model_path",
]
