"""launcher: one job file to checked DeepSpeed ZeRO / FSDP2 fine-tuning on torchrun and Slurm."""

__version__ = "0.1.0"
