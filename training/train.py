"""Train or fine-tune HarmoCLIP.

Runs unchanged as any of
    python training/train.py --config configs/synthetic_tiny.yaml
    accelerate launch training/train.py --config configs/vitb16_finetune.yaml
    torchrun --nproc_per_node 2 training/train.py --config ...

One loop: sample a global batch (each process its share), encode images, captions, boxes and phrases, gather the
embeddings of all processes, compute w_gc GC + w_lrc LRC + w_rla RLA + w_gr GR, step. Checkpoints every `checkpoint_every`
steps (atomic), `--resume` continues from the latest; at the end the model and processor are saved Hub-ready in
`<output_dir>/model`, the loss curves drawn in `<output_dir>/loss_curves.png`, and (optionally) evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing.atomic_files import save_model_atomically, write_text_atomic  # noqa: E402
from plumbing.command_line import log_to_file, run_command, setup_logging  # noqa: E402
from training.builders import build_datasets, build_model_and_processor, move_batch  # noqa: E402
from training.checkpointing import latest_checkpoint, load_checkpoint, load_process_state, save_checkpoint  # noqa: E402
from training.config import TrainConfig, build_argument_parser, config_from_args  # noqa: E402
from training.data.samplers import ShardedShuffleSampler  # noqa: E402
from training.data.streaming import RegionStream, StreamBatchSampler, StreamCollate, StreamRows  # noqa: E402
from training.plots import plot_loss_curves  # noqa: E402
from training.step import (  # noqa: E402
    accumulate_gradients,
    build_optimizer,
    forward_objective,
    lock_parameters,
    minimum_over_processes,
    parameter_groups,
    training_step,
)
from training.teacher import build_teachers, teacher_targets  # noqa: E402

# The one training step lives in training/step.py and the teacher in training/teacher.py; their names stay importable
# from here.
__all__ = [
    "main",
    "train",
    "ShardedShuffleSampler",
    "accumulate_gradients",
    "forward_objective",
    "lock_parameters",
    "parameter_groups",
    "teacher_targets",
]

logger = logging.getLogger("harmoclip.train")


class TrainingBatches:
    """The training batches from a resumable data position, on the device.

    The position is where this process is within `epoch`: the number of batches used (`ShardedShuffleSampler`) or the
    stream position after the last batch used (`StreamBatchSampler`, one per process). Every step all processes
    agree on what to do: the epoch ends for all when one of them has run out of data (streams need not split evenly),
    and a batch that lost every sample on some process is passed over by all. Records what the data sets skipped
    (unreadable files) or dropped (boxes under `min_box_size`, over `max_boxes`) and reports it once per epoch.
    """

    def __init__(
        self,
        loader: DataLoader,
        sampler: ShardedShuffleSampler | StreamBatchSampler,
        dataset: Any,
        accelerator: Accelerator,
        config: TrainConfig,
        epoch: int = 0,
        batch_in_epoch: int = 0,
        stream_position: dict[str, Any] | None = None,
    ):
        self.loader, self.sampler, self.dataset = loader, sampler, dataset
        self.accelerator, self.config = accelerator, config
        self.epoch, self.batch_in_epoch, self.stream_position = epoch, batch_in_epoch, stream_position
        self.skipped: dict[str, str] = {}
        self.small_boxes = self.boxes_over_limit = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        streamed = isinstance(self.sampler, StreamBatchSampler)
        while True:
            self.sampler.set_epoch(self.epoch, self.stream_position if streamed else self.batch_in_epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            batches = iter(self.loader)
            while True:
                batch = next(batches, None)
                # 2: samples to train on; 1: every sample of the batch was skipped; 0: this process has no more data
                status = 0.0 if batch is None else 1.0 + ("input_ids" in batch)
                status = minimum_over_processes(self.accelerator, status)
                if status == 0:
                    break
                self.batch_in_epoch += 1
                if streamed:
                    self.stream_position = self.sampler.position_after(batch.pop("stream_batch"))
                self.small_boxes += batch.pop("num_small_boxes_dropped", 0)
                self.boxes_over_limit += batch.pop("num_boxes_over_limit", 0)
                for path, reason in batch.pop("skipped", []):
                    self.skipped.setdefault(path, reason)
                if status < 2:
                    logger.warning("a batch without readable samples was passed over")
                    continue
                yield move_batch(batch, self.accelerator.device)
            self.report()
            self.epoch, self.batch_in_epoch, self.stream_position = self.epoch + 1, 0, None

    def report(self) -> None:
        """Logs (once) what this epoch skipped and dropped so far."""
        if self.skipped:
            listing = "\n".join(f"  {path}: {reason}" for path, reason in sorted(self.skipped.items()))
            logger.warning("epoch %d: skipped %d unreadable sample(s):\n%s", self.epoch, len(self.skipped), listing)
        if self.small_boxes or self.boxes_over_limit:
            logger.info(
                "epoch %d: dropped %d box(es) below min_box_size=%s and %d over max_boxes=%d",
                self.epoch,
                self.small_boxes,
                self.config.min_box_size,
                self.boxes_over_limit,
                self.config.max_boxes,
            )
        self.skipped.clear()
        self.small_boxes = self.boxes_over_limit = 0


def build_loader(
    config: TrainConfig, train_set: Any, collator: Any, num_processes: int, process_index: int
) -> tuple[DataLoader, ShardedShuffleSampler | StreamBatchSampler]:
    """The training DataLoader and its sampler: a streamed source's batches of this process's rows, decoded in the
    workers, or a map-style data set's share of each shuffled global batch."""
    if isinstance(train_set, RegionStream):
        sampler = StreamBatchSampler(
            train_set.rows, config.batch_size, num_processes, process_index, config.seed, config.shuffle_buffer
        )
        loader = DataLoader(
            StreamRows(train_set.decoder),
            batch_sampler=sampler,
            collate_fn=StreamCollate(collator),
            num_workers=config.num_workers,
        )
        return loader, sampler
    sampler = ShardedShuffleSampler(len(train_set), config.batch_size, num_processes, process_index, config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=config.num_workers,
        drop_last=True,
    )
    return loader, sampler


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drops the records after `step` from the metrics file (written again by a run resumed from `step`)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in lines))


class TrainingStopped(RuntimeError):
    """The run stopped before `max_steps` (too many non-finite losses in a row)."""


def check_trackers_installed(trackers: list[str]) -> None:
    """Accelerate silently drops a tracker whose package is missing: a run asked to log somewhere must."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in trackers if name != "all" and name not in available]
    if missing:
        raise ValueError(f"config `report_to`: tracker(s) {missing} not installed (installed: {sorted(available)})")


def train(config: TrainConfig) -> Path:
    """Runs the training job described by `config`; returns the folder of the saved Hub-ready model.

    The main process copies the project's log records to `<output_dir>/train.log`; where else they go (console) is
    the caller's logging set-up.
    """
    output_dir = Path(config.output_dir)
    check_trackers_installed(config.trackers)
    needs_unused = config.loss_gc_weight == 0 or not config.uses_phrases or not config.uses_regions
    accelerator = Accelerator(
        # Without CUDA, say so: Accelerate then sets up multi-process CPU training (gloo) under torchrun.
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        log_with=config.trackers or None,
        project_dir=str(output_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=needs_unused)],
    )
    try:
        if not accelerator.is_main_process:
            return run_training(config, accelerator)
        with log_to_file(output_dir / "train.log"):
            return run_training(config, accelerator)
    finally:
        end_distributed_run(accelerator)


TEARDOWN_PAUSE_S = 0.25  # see `end_distributed_run`


def end_distributed_run(accelerator: Accelerator, batches: Iterator[Any] | None = None) -> None:
    """Tears a run down while the interpreter is still whole: closes the batch stream, then destroys the process group.

    A run that stops at `max_steps`, on an error or early leaves its stream mid-epoch; closing it ends the DataLoader
    iterator (and its workers) now. Destroying the process group joins gloo's worker threads: left to interpreter
    exit, a thread still finishing the last collective can find the interpreter gone and abort the process
    ("terminate called without an active exception", SIGABRT), and torchrun then stops the other processes. Safe to
    call more than once; a run without a process group only closes its stream. Called after the last collective of
    every process (the end of a run, or an error), it waits for none of the other processes.
    """
    if batches is not None and hasattr(batches, "close"):
        batches.close()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # gloo's worker threads destroy each finished collective on their own thread, and one that holds a tensor
        # made in Python takes the GIL to free it. The process group's last reference is the DDP model's reducer,
        # which Python frees later with the GIL held; its destructor joins those threads, so a thread still waiting
        # for the GIL then waits forever (a hang seen under load). A pause with the GIL released lets them finish.
        time.sleep(TEARDOWN_PAUSE_S)
    accelerator.state.destroy_process_group()


@dataclass
class RunState:
    """Where a run stands: optimiser steps done, the data position, and the non-finite losses in a row."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    consecutive_nonfinite: int = 0
    stream_position: dict[str, Any] | None = None


def build_optimizer_and_schedule(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (`step.build_optimizer`) and its cosine schedule with warm-up (stepped once per optimiser step)."""
    optimizer = build_optimizer(model, config)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)


def resume_state(config: TrainConfig, accelerator: Accelerator, streamed: bool) -> RunState:
    """The state of the latest checkpoint in `output_dir` with `--resume` (its weights, optimiser and schedule are
    loaded into the prepared objects); a fresh `RunState` otherwise."""
    output_dir = Path(config.output_dir)
    if not config.resume:
        return RunState()
    found = latest_checkpoint(output_dir)
    if found is None:
        logger.info("--resume: no checkpoint in %s, starting from scratch", output_dir)
        return RunState()
    state = load_checkpoint(accelerator, found)
    run = RunState(state["step"], state["epoch"], state["batch_in_epoch"], state.get("consecutive_nonfinite", 0))
    if streamed:  # each process continues from its own place in its stream
        run.stream_position = load_process_state(found, accelerator.process_index, accelerator.num_processes)[
            "stream_position"
        ]
    logger.info("resumed from %s (step %d, epoch %d, batch %d)", found, run.step, run.epoch, run.batch_in_epoch)
    return run


def metrics_record(
    micro_terms: list[dict[str, float]],
    accelerator: Accelerator,
    unwrapped: torch.nn.Module,
    scheduler: Any,
    step: int,
    epoch: int,
    samples_per_second: float,
) -> dict[str, Any]:
    """One line of `metrics.jsonl`: the loss terms (mean over micro-batches and processes), the learning rate and
    both temperatures (`lrc_rla_logit_scale`: the one LRC and RLA use)."""
    record = {name: sum(terms[name] for terms in micro_terms) / len(micro_terms) for name in micro_terms[0]}
    record = {
        name: float(accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean"))
        for name, value in record.items()
    }
    record.update(
        step=step,
        epoch=epoch,
        lr=scheduler.get_last_lr()[0],
        logit_scale=float(unwrapped.logit_scale.detach().exp()),
        lrc_rla_logit_scale=float(unwrapped.lrc_rla_logit_scale.detach().exp()),
        samples_per_second=samples_per_second,
    )
    return record


def stop_after_nonfinite(config: TrainConfig, accelerator: Accelerator, run: RunState, progress: Any) -> None:
    """Counts a skipped step; raises `TrainingStopped` (naming the last good checkpoint) after too many in a row."""
    run.consecutive_nonfinite += 1
    logger.warning("non-finite loss at step %d: step skipped (%d in a row)", run.step + 1, run.consecutive_nonfinite)
    if run.consecutive_nonfinite < config.max_nonfinite_steps:
        return
    progress.close()
    last = latest_checkpoint(Path(config.output_dir))
    message = (
        f"stopping: {run.consecutive_nonfinite} consecutive non-finite losses at step {run.step + 1}; "
        f"the last good checkpoint is {last or 'none (no checkpoint was written)'}"
    )
    logger.error(message)
    accelerator.end_training()
    raise TrainingStopped(message)


def run_training(config: TrainConfig, accelerator: Accelerator) -> Path:
    """The body of `train` (after the Accelerator is made)."""
    set_seed(config.seed)
    logger.info(
        "processes: %d, device: %s, mixed precision: %s",
        accelerator.num_processes,
        accelerator.device,
        config.mixed_precision,
    )

    model, processor = build_model_and_processor(config)
    lock_parameters(model, config)
    train_set, val_set, collator = build_datasets(config, processor, main_process_first=accelerator.main_process_first)
    teacher, teacher_cache = build_teachers([config], model, processor, accelerator.device)

    loader, sampler = build_loader(config, train_set, collator, accelerator.num_processes, accelerator.process_index)
    optimizer, scheduler = build_optimizer_and_schedule(model, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by hand: once per optimiser step
    unwrapped = accelerator.unwrap_model(model)
    run = resume_state(config, accelerator, streamed=isinstance(sampler, StreamBatchSampler))

    metrics_path = start_records(config, accelerator, run.step)
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    progress = tqdm(
        total=config.max_steps,
        initial=run.step,
        desc="training",
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    stream = TrainingBatches(
        loader, sampler, train_set, accelerator, config, run.epoch, run.batch_in_epoch, run.stream_position
    )
    batches = iter(stream)
    while run.step < config.max_steps:
        micro_terms = training_step(
            model, unwrapped, optimizer, batches, config, accelerator, teacher, teacher_cache, scheduler
        )
        if micro_terms is None:
            stop_after_nonfinite(config, accelerator, run, progress)
            continue
        run.consecutive_nonfinite = 0
        run.step += 1
        window_samples += global_batch
        progress.update(1)

        if run.step % config.log_every == 0 or run.step == config.max_steps:
            elapsed = time.perf_counter() - window_start
            record = metrics_record(
                micro_terms,
                accelerator,
                unwrapped,
                scheduler,
                run.step,
                stream.epoch,
                window_samples / max(elapsed, 1e-9),
            )
            window_start, window_samples = time.perf_counter(), 0
            if accelerator.is_main_process:
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if config.trackers:
                accelerator.log(
                    {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")}, step=run.step
                )

        if run.step % config.checkpoint_every == 0 or run.step == config.max_steps:
            checkpoint(config, accelerator, run, stream, streamed=isinstance(sampler, StreamBatchSampler))

    progress.close()
    batches.close()  # `max_steps` may fall mid-epoch: end the stream (and its DataLoader workers) before saving
    stream.report()
    model_dir = finish_training(config, accelerator, unwrapped, processor, val_set is not None, metrics_path)
    accelerator.end_training()
    return model_dir


def start_records(config: TrainConfig, accelerator: Accelerator, step: int) -> Path:
    """Writes the run's `config.json`, starts the trackers and cuts `metrics.jsonl` back to `step` (a resumed run
    rewrites the steps after its checkpoint); returns the metrics file's path."""
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    if config.trackers:
        accelerator.init_trackers(
            "harmoclip", config={k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        keep_metrics_up_to(metrics_path, step)
    return metrics_path


def checkpoint(config: TrainConfig, accelerator: Accelerator, run: RunState, stream: Any, streamed: bool) -> None:
    """Saves the step's checkpoint with where the data stream stands (and, streamed, each process's position)."""
    state = {
        "epoch": stream.epoch,
        "batch_in_epoch": stream.batch_in_epoch,
        "consecutive_nonfinite": run.consecutive_nonfinite,
    }
    process_state = {"stream_position": stream.stream_position} if streamed else None
    save_checkpoint(accelerator, Path(config.output_dir), run.step, state, config.keep_checkpoints, process_state)


def finish_training(
    config: TrainConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    processor: Any,
    has_val_set: bool,
    metrics_path: Path,
) -> Path:
    """Saves the Hub-ready model (atomically) and the loss curves, then evaluates on the held-out split when asked;
    returns the model folder."""
    output_dir = Path(config.output_dir)
    model_dir = output_dir / "model"
    if accelerator.is_main_process:
        save_model_atomically(model, processor, model_dir)
        if metrics_path.is_file():
            plot_loss_curves(metrics_path, output_dir / "loss_curves.png")
        logger.info("saved the Hub-ready model to %s", model_dir)
    accelerator.wait_for_everyone()
    if config.evaluate_at_end and has_val_set and accelerator.is_main_process:
        from training.builders import evaluate_model

        results = evaluate_model(model, processor, config, output_dir)
        summary = {
            task: {k: v for k, v in figures.items() if not isinstance(v, (list, dict))}
            if task == "retrieval"
            else {method: figures[method]["top1"] for method in ("dense", "crop") if method in figures}
            for task, figures in results.items()
        }
        logger.info(
            "evaluation (held-out; boxcls: Top-1 per method): %s; full report in %s",
            json.dumps(summary),
            output_dir / "eval.json",
        )
    return model_dir


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-train` command; returns the exit code (a user's mistake: one line `error: ...`, exit 1 or 2)."""

    def run() -> str:
        config = config_from_args(build_argument_parser(__doc__.split("\n\n")[0]).parse_args(argv))
        # Other processes of a distributed run (torchrun / accelerate launch set RANK) log warnings only.
        setup_logging(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data loader forks after the tokenizer ran
        return f"saved the Hub-ready model to {train(config)}"

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
