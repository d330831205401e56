"""The packing rule: whether packed documents stay apart for an attention implementation and a
micro batch size, with the installed transformers. ``launcher plan`` checks it for the job
before anything runs; the ranks check the model they built (launcher.train.data.collate).

transformers finds the document boundaries of a packed row in ``position_ids``
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for the
``eager``, ``sdpa`` and ``flex_attention`` implementations, when the batch is run with
``attention_mask=None`` and ``use_cache=False``; ``flash_attention_2/3`` read the boundaries from
``position_ids`` only when the batch has a single row. Nothing here imports transformers.
"""
from __future__ import annotations

from typing import Optional

PACKED_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
PACKING_TRANSFORMERS = "4.56"  # find_packed_sequence_indices (transformers#39194); also launcher's floor


def _detects_packing() -> bool:
    """Whether the installed transformers finds packed documents in position_ids (read from its
    version: importing transformers to look would cost `launcher plan` seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        return Version(version("transformers")) >= Version(PACKING_TRANSFORMERS)
    except PackageNotFoundError:
        return False


def packing_problem(impl: str, micro_batch_size: int, has_detection: Optional[bool] = None) -> Optional[str]:
    """Why packed documents could attend to each other with attention ``impl`` at this micro batch
    size (one line saying what to change), or None when they are kept apart. ``has_detection``:
    whether the installed transformers finds packed documents in ``position_ids`` (default: look)."""
    if has_detection is None:
        has_detection = _detects_packing()
    if not has_detection:
        from importlib.metadata import version

        return (f"data.packing: transformers {version('transformers')} does not find packed documents in "
                f"position_ids (transformers >= {PACKING_TRANSFORMERS} does), so they would attend to each "
                "other; upgrade transformers or set data.packing=false")
    if impl in PACKED_ATTN_IMPLEMENTATIONS:
        return None
    if impl.startswith("flash_attention"):
        if micro_batch_size == 1:
            return None
        return (f"data.packing: {impl} keeps packed documents apart only at micro batch 1 (transformers reads "
                f"their boundaries from position_ids of a single row), got train.micro_batch_size="
                f"{micro_batch_size}; set train.micro_batch_size=1, model.attn_implementation=sdpa, or "
                "data.packing=false")
    return (f"data.packing: attention {impl!r} is not known to keep packed documents apart; set "
            "model.attn_implementation=sdpa or data.packing=false")
