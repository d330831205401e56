"""The embedded default job: tiny model, tokenizer and task, all built locally."""
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
from launcher.spec import DEFAULT_JOB_PATH  # defined once, where load_job reads it

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
