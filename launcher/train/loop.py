"""One training loop per rank. The Strategy (FSDP2 or ZeRO) owns wrap/step/save/load; the loop
owns data order, loss normalisation, the step's metrics, checkpoints and stops. Building the
model, checkpoints, evaluation and energy tracking live in their own modules."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import rundir
from launcher.plan.schedule import LrLambda, warmup_steps
from launcher.progress import step_line
from launcher.rundir.artifacts import RunningTotals
from launcher.train import checkpoint as ckpts
from launcher.train.console import progress_every, say
from launcher.train.collectives import CollectiveClock
from launcher.train.control import install_stop_handler, stop_requested
from launcher.train.evaluate import accuracy_of_model, eval_loss
from launcher.train.loss import label_count, loss_sum, model_inputs
from launcher.train.memory import MemoryMonitor, gather_memory, release_free_memory
from launcher.train.metrics import StepSums, reduce_step, restarts_all_nodes, start_record
from launcher.train.trackers import start_trackers


def log0(msg: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        say(f"[launcher] {msg}")


@dataclass
class Run:
    """What every part of one rank's training shares."""

    run: Path
    plan: Any
    prepared: Any
    tokenizer: Any
    rank: int
    world: int
    metrics: rundir.MetricsWriter
    paths: Any
    sched: Any
    total_steps: int
    pad_id: int
    monitor: MemoryMonitor
    model: Any = None
    strategy: Any = None

    @property
    def spec(self):
        return self.plan.job

    @property
    def num_labels(self) -> int:
        return len(self.prepared.stats.labels or []) if self.spec.train.task == "classification" else 0

    def general_record(self, step: int, phase: str) -> rundir.GeneralEvalRecord:
        """The perplexity of eval.general_data (collective, every rank). LoRA's "before" is the
        trained model with its adapters off: the base model, with no second copy."""
        import math
        from contextlib import nullcontext

        rows = self.prepared.general
        off = phase == "before" and self.spec.train.method == "lora"
        module = self.strategy.unwrapped()
        with (module.disable_adapter() if off else nullcontext()):
            loss = eval_loss(self.strategy, rows, self.pad_id, self.plan).loss
        return rundir.GeneralEvalRecord(phase=phase, step=step, loss=loss, perplexity=math.exp(min(loss, 700.0)),
                                        tokens=label_count(rows), adapters_off=off)

    def eval_record(self, step: int, accuracy=None) -> rundir.EvalRecord:
        """The eval loss over the eval split (collective, every rank); a classifier's accuracy
        and macro F1 from the same pass."""
        scores = eval_loss(self.strategy, self.prepared.eval, self.pad_id, self.plan, self.num_labels)
        return rundir.EvalRecord(step=step, eval_loss=scores.loss, eval_tokens=label_count(self.prepared.eval),
                                 accuracy=scores.accuracy if scores.accuracy is not None else accuracy,
                                 f1_macro=scores.f1_macro)


def train_main(run_dir: str, plan, prepared, tokenizer, t_start: float) -> int:
    """Train ``plan`` in ``run_dir`` on this rank (the process group is up, the data prepared)."""
    import torch.distributed as dist

    from launcher.train.energy_sidecar import start_node_tracker

    r = _prepare(Path(run_dir).resolve(), plan, prepared, tokenizer)
    tracker = start_node_tracker(r.run, plan) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else None
    latest = ckpts.choose_checkpoint(r.run, log0)  # collective: the newest whose manifest verifies
    acc_before = None
    if r.spec.train.eval_accuracy_samples and r.rank == 0 and latest is None:  # loaded alone, then freed
        acc_before = accuracy_of_model(r.paths.model, r.paths.tokenizer, r.spec, r.paths.data)
        release_free_memory()
        r.monitor.rebaseline()  # the training's peak, as the plan counts it: not this model's nor its libraries
    n_params, n_trainable = _build(r)
    start_step, totals, steps_lost = _resume(r, latest)
    trackers = start_trackers(r.run, plan, start_step, r.metrics)  # rank 0: fed every record written from here
    dist.barrier()
    _start_records(r, n_params, n_trainable, start_step, steps_lost, t_start, acc_before)
    from launcher.train.watchdog import Watchdog, default_store

    watchdog = Watchdog(r.run, r.rank, r.world, r.spec.train.hang_timeout_s, default_store())
    status, done = _train(r, start_step, totals, watchdog)
    watchdog.pause()  # the final save and evaluation may take long, and have their own timeouts
    _end_records(r, status, done)
    watchdog.stop()
    _finish(r.run, r.rank, status, done, tracker, r.strategy, trackers)
    return 0


def _prepare(run: Path, plan, prepared, tokenizer) -> Run:
    """This rank's settings, schedule and metrics writer; the engine imported (no model yet)."""
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from launcher.sources import job_paths
    from launcher.train.data import BatchSchedule, pad_id_for
    from launcher.train.strategies import import_engine

    spec = plan.job
    rank, world = dist.get_rank(), dist.get_world_size()
    if plan.threads_per_rank and plan.device == "cpu":
        torch.set_num_threads(plan.threads_per_rank)
    install_stop_handler()
    from launcher.plan.schedule import replay_rows_per_step

    replay = spec.data.replay
    sched = BatchSchedule(len(prepared.train), world, plan.micro_batch_size, plan.grad_accum_steps,
                          spec.train.epochs, spec.train.seed, replay_rows=len(prepared.replay or []),
                          replay_per_step=replay_rows_per_step(plan.global_batch_size,
                                                               replay.fraction if replay else None))
    if prepared.replay:  # the schedule's indices past the task's rows are the general rows
        from launcher.train.data.extra import ConcatRows

        prepared.train = ConcatRows(prepared.train, prepared.replay)
    hf_logging.disable_progress_bar()
    import_engine(plan)
    return Run(run=run, plan=plan, prepared=prepared, tokenizer=tokenizer, rank=rank, world=world,
               metrics=rundir.MetricsWriter(run, enabled=rank == 0), paths=job_paths(spec), sched=sched,
               total_steps=sched.total_steps(spec.train.max_steps), pad_id=pad_id_for(tokenizer),
               monitor=MemoryMonitor())  # its baseline: the libraries (the engine's too) and the data, no model


def _build(r: Run) -> tuple[int, int]:
    """The model and its strategy (engine, optimizer, schedule); the parameter counts."""
    from launcher.modelinfo import count_params
    from launcher.train.model import build_model, check_packing
    from launcher.train.strategies import build_strategy

    spec, plan = r.spec, r.plan
    lr_lambda = LrLambda(r.total_steps, warmup_steps(r.total_steps, spec.train.warmup_ratio),
                         spec.train.lr_scheduler, spec.train.min_lr_ratio)
    ckpts.seed_everything(spec.train.seed)
    r.model = build_model(plan, r.paths.model, r.prepared.stats.labels, r.pad_id)
    check_packing(r.model, plan.micro_batch_size, r.prepared.stats.packed)
    counts = count_params(r.model)
    r.strategy = build_strategy(plan, r.model, lr_lambda, r.paths.model)
    r.monitor.sample()
    release_free_memory()  # what loading left free
    return counts


def _resume(r: Run, latest) -> tuple[int, RunningTotals, int]:
    """(step, running totals, steps lost) from the newest verified checkpoint (step 0 without one).
    An earlier attempt's steps past the checkpoint (or all of them, when it died before its first
    checkpoint) are done again: their records go, so that every step is logged once."""
    start_step, totals = 0, RunningTotals()
    if latest is not None:
        state = ckpts.resume(latest, r.strategy, r.rank)
        start_step, totals = state.step, state.totals or _totals_from_metrics(r.run, state.step)
    logged = rundir.read_metrics(r.run).of(rundir.TrainRecord)
    steps_lost = max(0, logged[-1].step - start_step) if logged else 0
    r.metrics.truncate_after(start_step)
    if latest is not None:
        log0(f"resumed from {latest.name}: step {start_step} of {r.total_steps}")
    return start_step, totals, steps_lost


def _start_records(r: Run, n_params: int, n_trainable: int, start_step: int, steps_lost: int, t_start: float,
                   acc_before) -> None:
    """The attempt's start record, its memory after setup, and (first attempt) the eval baseline."""
    from launcher.facts.flops import flops_per_token_from_config

    spec, plan = r.spec, r.plan
    base = r.model.get_base_model() if hasattr(r.model, "get_base_model") else r.model
    config = base.config.to_dict()
    if spec.train.task == "classification":  # no LM head: the embedding table is never a matmul
        config["tie_word_embeddings"] = False
    flops_tok = flops_per_token_from_config(config, plan.seq_len, n_params, n_trainable,
                                            spec.train.method)
    restart = restarts_all_nodes(r.strategy.device)  # collective
    r.metrics.write(start_record(plan, world=r.world, n_params=n_params, n_trainable=n_trainable,
                                 flops_per_token=flops_tok, planned_steps=r.total_steps, stats=r.prepared.stats,
                                 train_rows=len(r.prepared.train), resumed_from=start_step, t_start=t_start,
                                 steps_lost=steps_lost, restart=restart))
    _memory_record(r.metrics, r.monitor, r.strategy, "setup", start_step)
    if start_step == 0 and len(r.prepared.eval) and (spec.train.eval_every_steps or spec.train.eval_accuracy_samples
                                                     or r.num_labels):
        # the baseline: eval loss (collective, every rank) and task accuracy (rank 0; a classifier's
        # in the same pass) before training
        r.metrics.write(r.eval_record(0, acc_before))
    if start_step == 0 and r.prepared.general and spec.train.method == "full":
        r.metrics.write(r.general_record(0, "before"))  # LoRA's is measured at the end, adapters off


def _step(r: Run, step: int, clock: CollectiveClock):
    """One optimizer step over the grad_accum_steps micro batches: (the totals over every rank,
    the loss, the learning rate used, the labels of the global batch)."""
    from launcher.train.data import collate

    t_compute = time.perf_counter()
    clock.take()
    global_labels = label_count(r.prepared.train[i] for i in r.sched.global_rows(step))
    sums = StepSums()
    for micro in range(r.plan.grad_accum_steps):
        rows = [r.prepared.train[i] for i in r.sched.rows_for(step, micro, r.rank)]
        batch = collate(rows, r.pad_id)
        out = r.strategy.forward(**model_inputs(batch, r.strategy.device))
        lsum = loss_sum(out.logits, batch["labels"], r.spec.train.task)
        r.strategy.backward(lsum * (r.strategy.loss_scale / max(1, global_labels)),
                            last_micro=micro == r.plan.grad_accum_steps - 1)
        sums.add(lsum, batch, rows)
    grad_norm = r.strategy.step()
    lr_used = r.strategy.lr()
    compute_s = time.perf_counter() - t_compute - clock.take()  # the rest of the step is waiting
    total = reduce_step(sums, grad_norm, stop_requested(r.run), r.strategy.device, compute_s)
    return total, total.loss_sum / max(1, global_labels), lr_used, global_labels


# Under host_memory fast (no trim after each step: the next step would fault its pages in again),
# freed host memory is given back every this many steps: glibc keeps what one step freed and the
# next could not reuse, and a long run's peak would otherwise creep up with its step count.
FAST_TRIM_EVERY = 100


def _train(r: Run, start_step: int, totals: RunningTotals, watchdog) -> tuple[str, int]:
    """The steps from ``start_step``: ("completed" or "preempted", the last step done)."""
    spec, plan = r.spec, r.plan
    cum_samples, cum_tokens = totals.cum_samples, totals.cum_tokens  # the checkpoint's: its steps are done
    has_eval = len(r.prepared.eval) > 0
    status, done = "completed", start_step
    r.strategy.train()
    show_every = progress_every(r.total_steps, spec.train.log_every_steps)
    t_last, step_time = time.time(), None
    clock = CollectiveClock().install()  # a rank's compute is its step less the time it waits on others
    for step in range(start_step, r.total_steps):
        watchdog.beat(step, step_time)
        total, loss, lr_used, global_labels = _step(r, step, clock)
        now = time.time()
        step_time, t_last = now - t_last, now
        cum_samples += total.docs
        cum_tokens += total.tokens
        done = step + 1
        r.metrics.write(rundir.TrainRecord(
            step=done, epoch=r.sched.epoch_float(done), loss=loss, lr=lr_used, grad_norm=total.grad_norm,
            samples=total.docs, tokens=total.tokens, padding_tokens=total.padding, label_tokens=global_labels,
            step_time_s=step_time, cum_samples=cum_samples, cum_tokens=cum_tokens, rank_compute_s=total.rank_compute_s))
        if r.rank == 0 and (done % show_every == 0 or done == r.total_steps):
            say(step_line(done, r.total_steps, loss, lr_used, total.tokens, step_time))
        if spec.train.eval_every_steps and done % spec.train.eval_every_steps == 0 and done < r.total_steps and has_eval:
            r.metrics.write(r.eval_record(done))
            watchdog.beat(step, phase="after eval")
            t_last = time.time()
        r.monitor.sample()
        if plan.host_memory == "lean" or done % FAST_TRIM_EVERY == 0:
            release_free_memory()
        kept = RunningTotals(cum_samples=cum_samples, cum_tokens=cum_tokens)
        if total.stop:
            ckpts.save_checkpoint(r.run, r.strategy, done, spec.train.keep_last_checkpoints, r.metrics, kept)
            status = "preempted"
            log0(f"stop requested: checkpoint at step {done} saved; the job can resume from it")
            break
        if spec.train.save_every_steps and done % spec.train.save_every_steps == 0 and done < r.total_steps:
            watchdog.beat(step, phase="checkpoint")
            ckpts.save_checkpoint(r.run, r.strategy, done, spec.train.keep_last_checkpoints, r.metrics, kept)
            t_last = time.time()
    return status, done


def _end_records(r: Run, status: str, done: int) -> None:
    """A completed run's final model and last evaluation; every run's memory and end records."""
    final = None
    if status == "completed":
        final = ckpts.save_final(r.run, r.strategy, r.spec.train.method, r.tokenizer)
    # the peaks of the training and its saves, as the plan counts them: before rank 0 loads the
    # final model again to generate (accuracy), which the plan does not count
    _memory_record(r.metrics, r.monitor, r.strategy, "end", done)
    r.monitor.stop()
    if status == "completed" and len(r.prepared.eval):
        acc = accuracy_of_model(final, final, r.spec, r.paths.data) \
            if r.spec.train.eval_accuracy_samples and r.rank == 0 else None
        r.metrics.write(r.eval_record(r.total_steps, acc))
    if status == "completed" and r.prepared.general:
        if r.spec.train.method == "lora":
            r.metrics.write(r.general_record(r.total_steps, "before"))
        r.metrics.write(r.general_record(r.total_steps, "after"))
    r.metrics.write(rundir.EndRecord(steps=done, status=status, final_path=str(final) if final else None))


def _totals_from_metrics(run: Path, step: int) -> RunningTotals:
    """A checkpoint from a launcher that kept no totals in trainer_state.json: the last logged step's."""
    done = [r for r in rundir.read_metrics(run).of(rundir.TrainRecord) if r.step <= step]
    return RunningTotals(cum_samples=done[-1].cum_samples, cum_tokens=done[-1].cum_tokens) if done else RunningTotals()


def _memory_record(metrics, monitor, strategy, phase: str, step: int) -> None:
    """Every rank's memory, gathered on rank 0 (collective)."""
    ranks = gather_memory(monitor, strategy.states.counts)
    if ranks is not None:
        metrics.write(rundir.MemoryRecord(phase=phase, step=step, ranks=[rundir.RankMemory(**r) for r in ranks]))


def _finish(run: Path, rank: int, status: str, done: int, tracker, strategy, trackers) -> None:
    """Stop the node's tracker, write the marker, close the experiment trackers' runs, tear down
    in a fixed order. The reports are not the ranks' work: the process that launched torchrun
    writes them (launcher.execute.finish)."""
    import torch.distributed as dist

    dist.barrier()
    if tracker is not None:
        tracker.stop()
    dist.barrier()
    if rank == 0:
        if status == "completed":
            rundir.write_atomic(rundir.RunDir(run).completed, f"{time.time()}\n")
        else:
            rundir.write_atomic(rundir.RunDir(run).preempted, f"step {done}\n")
        trackers.close(status)
    dist.barrier()
    _teardown(strategy)


def _teardown(strategy) -> None:
    """Collective shutdown in a fixed order: barrier, drop the engine, then destroy the group.
    Tearing down gloo while a peer still holds the engine ended ~1 in 14 runs with SIGABRT."""
    import gc

    import torch.distributed as dist

    dist.barrier()
    del strategy
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
