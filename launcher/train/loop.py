"""One training loop per rank. The Strategy (FSDP2 or ZeRO) owns wrap/step/save/load; the loop
owns data order, loss normalisation, the step's metrics, checkpoints and stops. Building the
model, checkpoints, evaluation and energy tracking live in their own modules."""
from __future__ import annotations

import os
import time
from pathlib import Path

from launcher import rundir
from launcher.plan.schedule import LrLambda, warmup_steps
from launcher.progress import step_line
from launcher.rundir.artifacts import RunningTotals
from launcher.train import checkpoint as ckpts
from launcher.train.console import progress_every, say
from launcher.train.collectives import CollectiveClock
from launcher.train.control import install_stop_handler, stop_requested
from launcher.train.evaluate import accuracy_of_model, eval_loss
from launcher.train.loss import label_count, model_inputs, token_loss_sum
from launcher.train.memory import MemoryMonitor, gather_memory, release_free_memory
from launcher.train.metrics import StepSums, reduce_step, restarts_all_nodes, start_record
from launcher.train.trackers import start_trackers


def log0(msg: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        say(f"[launcher] {msg}")


def train_main(run_dir: str, plan, prepared, tokenizer, t_start: float) -> int:
    """Train ``plan`` in ``run_dir`` on this rank (the process group is up, the data prepared)."""
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from launcher.modelinfo import count_params
    from launcher.facts.flops import flops_per_token_from_config
    from launcher.sources import job_paths
    from launcher.train.data import BatchSchedule, collate, pad_id_for
    from launcher.train.energy_sidecar import start_node_tracker
    from launcher.train.model import build_model, check_packing
    from launcher.train.strategies import build_strategy, import_engine
    from launcher.train.watchdog import Watchdog, default_store

    run = Path(run_dir).resolve()
    spec = plan.job
    rank, world = dist.get_rank(), dist.get_world_size()
    if plan.threads_per_rank and plan.device == "cpu":
        torch.set_num_threads(plan.threads_per_rank)
    install_stop_handler()
    metrics = rundir.MetricsWriter(run, enabled=rank == 0)
    paths = job_paths(spec)
    tracker = start_node_tracker(run, plan) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else None

    pad_id = pad_id_for(tokenizer)
    sched = BatchSchedule(len(prepared.train), world, plan.micro_batch_size, plan.grad_accum_steps,
                          spec.train.epochs, spec.train.seed)
    total_steps = sched.total_steps(spec.train.max_steps)
    lr_lambda = LrLambda(total_steps, warmup_steps(total_steps, spec.train.warmup_ratio),
                         spec.train.lr_scheduler, spec.train.min_lr_ratio)

    hf_logging.disable_progress_bar()
    import_engine(plan)
    monitor = MemoryMonitor()  # baseline: the libraries (the engine's too) and the data, no model yet
    acc_before = None
    latest = ckpts.choose_checkpoint(run, log0)  # collective: the newest whose manifest verifies
    if spec.train.eval_accuracy_samples and rank == 0 and latest is None:
        acc_before = accuracy_of_model(paths.model, paths.tokenizer, spec, paths.data)  # loaded alone, then freed
    ckpts.seed_everything(spec.train.seed)
    model = build_model(plan, paths.model)
    check_packing(model, plan.micro_batch_size, prepared.stats.packed)
    n_params, n_trainable = count_params(model)
    strategy = build_strategy(plan, model, lr_lambda, paths.model)
    monitor.sample()
    release_free_memory()  # what loading left free

    start_step, totals = 0, RunningTotals()
    if latest is not None:
        state = ckpts.resume(latest, strategy, rank)
        start_step, totals = state.step, state.totals or _totals_from_metrics(run, state.step)
    # an earlier attempt's steps past the checkpoint (or all of them, when it died before its
    # first checkpoint) are done again: their records go, so that every step is logged once
    logged = rundir.read_metrics(run).of(rundir.TrainRecord)
    steps_lost = max(0, logged[-1].step - start_step) if logged else 0
    metrics.truncate_after(start_step)
    if latest is not None:
        log0(f"resumed from {latest.name}: step {start_step} of {total_steps}")
    trackers = start_trackers(run, plan, start_step, metrics)  # rank 0: fed every record written from here
    dist.barrier()

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flops_tok = flops_per_token_from_config(base.config.to_dict(), plan.seq_len, n_params, n_trainable,
                                            spec.train.method)
    restart = restarts_all_nodes(strategy.device)  # collective
    metrics.write(start_record(plan, world=world, n_params=n_params, n_trainable=n_trainable,
                               flops_per_token=flops_tok, planned_steps=total_steps, stats=prepared.stats,
                               train_rows=len(prepared.train), resumed_from=start_step, t_start=t_start,
                               steps_lost=steps_lost, restart=restart))
    _memory_record(metrics, monitor, strategy, "setup", start_step)
    has_eval = len(prepared.eval) > 0
    if start_step == 0 and has_eval and (spec.train.eval_every_steps or spec.train.eval_accuracy_samples):
        # the baseline: eval loss (collective, every rank) and task accuracy (rank 0) before training
        metrics.write(rundir.EvalRecord(step=0, eval_loss=eval_loss(strategy, prepared.eval, pad_id, plan),
                                        eval_tokens=label_count(prepared.eval), accuracy=acc_before))

    cum_samples, cum_tokens = totals.cum_samples, totals.cum_tokens  # the checkpoint's: its steps are done
    status, done = "completed", start_step
    strategy.train()
    watchdog = Watchdog(run, rank, world, spec.train.hang_timeout_s, default_store())
    show_every = progress_every(total_steps, spec.train.log_every_steps)
    t_last = time.time()
    step_time = None
    clock = CollectiveClock().install()  # a rank's compute is its step less the time it waits on others
    for step in range(start_step, total_steps):
        watchdog.beat(step, step_time)
        t_compute = time.perf_counter()
        clock.take()
        global_labels = label_count(prepared.train[i] for i in sched.global_rows(step))
        sums = StepSums()
        for micro in range(plan.grad_accum_steps):
            rows = [prepared.train[i] for i in sched.rows_for(step, micro, rank)]
            batch = collate(rows, pad_id)
            out = strategy.forward(**model_inputs(batch, strategy.device))
            lsum = token_loss_sum(out.logits, batch["labels"])
            strategy.backward(lsum * (strategy.loss_scale / max(1, global_labels)),
                              last_micro=micro == plan.grad_accum_steps - 1)
            sums.add(lsum, batch, rows)
        grad_norm = strategy.step()
        lr_used = strategy.lr()
        compute_s = time.perf_counter() - t_compute - clock.take()  # the rest of the step is waiting
        total = reduce_step(sums, grad_norm, stop_requested(run), strategy.device, compute_s)
        now = time.time()
        step_time, t_last = now - t_last, now
        cum_samples += total.docs
        cum_tokens += total.tokens
        done = step + 1
        loss = total.loss_sum / max(1, global_labels)
        metrics.write(rundir.TrainRecord(
            step=done, epoch=sched.epoch_float(done), loss=loss, lr=lr_used, grad_norm=total.grad_norm,
            samples=total.docs, tokens=total.tokens, padding_tokens=total.padding, label_tokens=global_labels,
            step_time_s=step_time, cum_samples=cum_samples, cum_tokens=cum_tokens, rank_compute_s=total.rank_compute_s))
        if rank == 0 and (done % show_every == 0 or done == total_steps):
            say(step_line(done, total_steps, loss, lr_used, total.tokens, step_time))
        if spec.train.eval_every_steps and done % spec.train.eval_every_steps == 0 and done < total_steps and has_eval:
            metrics.write(rundir.EvalRecord(step=done, eval_loss=eval_loss(strategy, prepared.eval, pad_id, plan),
                                            eval_tokens=label_count(prepared.eval)))
            watchdog.beat(step, phase="after eval")
            t_last = time.time()
        monitor.sample()
        if plan.host_memory == "lean":
            release_free_memory()
        if total.stop:
            ckpts.save_checkpoint(run, strategy, done, spec.train.keep_last_checkpoints, metrics,
                                  RunningTotals(cum_samples=cum_samples, cum_tokens=cum_tokens))
            status = "preempted"
            log0(f"stop requested: checkpoint at step {done} saved; the job can resume from it")
            break
        if spec.train.save_every_steps and done % spec.train.save_every_steps == 0 and done < total_steps:
            watchdog.beat(step, phase="checkpoint")
            ckpts.save_checkpoint(run, strategy, done, spec.train.keep_last_checkpoints, metrics,
                                  RunningTotals(cum_samples=cum_samples, cum_tokens=cum_tokens))
            t_last = time.time()

    watchdog.pause()
    final = None
    if status == "completed":
        final = ckpts.save_final(run, strategy, spec.train.method, tokenizer)
        if has_eval:
            acc = accuracy_of_model(final, final, spec, paths.data) if spec.train.eval_accuracy_samples and rank == 0 else None
            metrics.write(rundir.EvalRecord(step=total_steps, eval_loss=eval_loss(strategy, prepared.eval, pad_id, plan),
                                            eval_tokens=label_count(prepared.eval), accuracy=acc))
    _memory_record(metrics, monitor, strategy, "end", done)
    monitor.stop()
    watchdog.stop()
    metrics.write(rundir.EndRecord(steps=done, status=status, final_path=str(final) if final else None))
    _finish(run, rank, status, done, tracker, strategy, trackers)
    return 0


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
