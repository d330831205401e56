"""A rank started before its plan is written (`launcher run` starts torchrun while it tokenizes
the data): it imports what the plan will need, then waits for the parent's go.

The parent passes ``LAUNCHER_PRESTART`` (launcher.execute.local.Torchrun): the strategy, ZeRO
stage, method and model type to import for, the go file to wait for, and its own pid. Until the
go, whatever the imports print is held in an anonymous file (the run directory may still be
removed, if the parent finds bad input); after it, :func:`wait_for_go` gives it back, and the
caller writes it into the rank's log. A rank whose parent is gone before the go exits quietly.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time

PRESTART_ENV = "LAUNCHER_PRESTART"
POLL_S = 0.02


def wait_for_go() -> bytes:
    """Import for the plan, wait for the go: what was printed meanwhile (b"" without a prestart)."""
    raw = os.environ.pop(PRESTART_ENV, None)  # not passed on to what this rank starts
    if not raw:
        return b""
    try:
        hint = json.loads(raw)
        go, parent = str(hint["go"]), int(hint["parent"])
    except (ValueError, KeyError, TypeError):
        return b""
    from launcher.rundir.lock import pid_alive

    held = tempfile.TemporaryFile()
    with output_into(held):
        warm(hint)
        while not os.path.exists(go):
            if not pid_alive(parent):
                os._exit(0)  # `launcher run` is gone: nothing to train for, nothing to say
            time.sleep(POLL_S)
    held.seek(0)
    return held.read()


@contextlib.contextmanager
def output_into(f):
    """This process's stdout and stderr (the file descriptors, so C++ and child output too) go
    into the open file ``f`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def warm(hint: dict) -> None:
    """The imports a rank of this plan makes on its way to its first step. Failures are left for
    the rank to meet, and report, where it meets them today."""
    from launcher.train.lean import import_engines, no_collections, skip_unused_trackers

    trackers = hint.get("trackers")
    if isinstance(trackers, list):
        skip_unused_trackers(str(t) for t in trackers)
    with no_collections():
        import_engines()
        _import_for(hint)


def _import_for(hint: dict) -> None:
    import importlib

    names = ["torch.distributed", "launcher.train.loop", "launcher.train.data", "launcher.train.preflight",
             "transformers.models.auto.tokenization_auto", "transformers.models.auto.modeling_auto"]
    model_type = hint.get("model_type")
    if isinstance(model_type, str) and re.fullmatch(r"[a-z0-9_-]+", model_type):
        m = model_type.replace("-", "_")
        names += [f"transformers.models.{m}.configuration_{m}", f"transformers.models.{m}.modeling_{m}"]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional warm-up: the rank imports it again, and says why
            pass
    try:  # transformers' table of checkpoint renamings, built on first load (1,166 regexes here): once, not per rank
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping(model_type)
    except Exception:  # noqa: BLE001 - a transformers without it
        pass
    try:
        from launcher.train.strategies import import_engine_for

        import_engine_for(str(hint.get("strategy")), hint.get("zero_stage"), str(hint.get("method")))
    except Exception:  # noqa: BLE001
        pass
