"""bench only: switch one of launcher's per-step mechanisms off in every process of a run, to
measure what it costs (bench/vs_trainer.py --ablate). Not part of launcher: it is found only when
this folder is first on PYTHONPATH, and does nothing unless LAUNCHER_ABLATE names mechanisms.

    LAUNCHER_ABLATE=memory_thread,malloc_trim PYTHONPATH=bench/ablate launcher run ...

Each patch is applied right after its module is first imported (nothing is imported early)."""
import importlib.abc
import os
import sys

WANTED = [x for x in os.environ.get("LAUNCHER_ABLATE", "").split(",") if x]


def _memory_thread(m):  # the rank's 20 ms sampling thread: started, then returns at once
    m.MemoryMonitor._run = lambda self: None


def _malloc_trim(m):  # malloc_trim after every step
    m.release_free_memory = lambda: None


def _energy(m):  # the node's CodeCarbon child
    m.start_node_tracker = lambda *a, **k: None


def _watchdog(m):  # the heartbeat into the store every step, and the watchdog's thread
    class NoWatchdog:
        def __init__(self, *a, **k):
            pass

        def beat(self, *a, **k):
            pass

        pause = stop = beat

    m.Watchdog = NoWatchdog


def _clock(m):  # the timing wrapper around every collective
    m.CollectiveClock.install = lambda self: self


def _chunked_loss(m):  # the whole-tensor cross-entropy, as transformers computes it
    def token_loss_sum(logits, labels, chunk_tokens=None):
        import torch.nn.functional as F

        labels = labels.to(logits.device)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum")

    m.token_loss_sum = token_loss_sum


def _zero_caps(m):  # buckets and ZeRO-3's live parameters capped at a twentieth of the model
    m.live_parameter_cap = lambda n_params: m.ZERO3_MAX_LIVE_PARAMETERS


def _mmap_threshold(m):  # glibc's own (dynamic) mmap threshold instead of the fixed MALLOC_MMAP_THRESHOLD_
    original = m.render_env

    def render_env(*a, **k):
        env = original(*a, **k)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        return env

    m.render_env = render_env


PATCHES = {
    "mmap_threshold": ("launcher.render.torchrun", _mmap_threshold),
    "zero_caps": ("launcher.plan.engines", _zero_caps),
    "memory_thread": ("launcher.train.memory", _memory_thread),
    "malloc_trim": ("launcher.train.memory", _malloc_trim),
    "energy": ("launcher.train.energy_sidecar", _energy),
    "watchdog": ("launcher.train.watchdog", _watchdog),
    "clock": ("launcher.train.collectives", _clock),
    "chunked_loss": ("launcher.train.loss", _chunked_loss),
}


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, todo):
        self.todo = todo  # module name -> [patch]

    def find_spec(self, name, path=None, target=None):
        if name not in self.todo:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader, patches = spec.loader, self.todo[name]
        original = loader.exec_module

        def exec_module(module):
            original(module)
            for p in patches:
                p(module)

        loader.exec_module = exec_module
        return spec


if WANTED:
    unknown = [w for w in WANTED if w not in PATCHES]
    if unknown:
        raise SystemExit(f"LAUNCHER_ABLATE: unknown {unknown}; known: {sorted(PATCHES)}")
    todo = {}
    for w in WANTED:
        mod, fn = PATCHES[w]
        todo.setdefault(mod, []).append(fn)
    sys.meta_path.insert(0, _AfterImport(todo))
