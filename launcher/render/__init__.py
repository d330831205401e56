"""Pure renderers: a Plan in, text or argv out. Deterministic (sorted keys, quoted values),
so golden files pin them (regenerate with `UPDATE_GOLDEN=1 pytest tests/unit/test_render_torchrun.py
tests/unit/test_render_slurm.py`)."""
