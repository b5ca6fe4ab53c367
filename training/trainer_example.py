"""HarmoCLIP trained by transformers' `Trainer`, as a user who already has Trainer scripts would train it: the
project's data set and `ModelBatchCollator`, nothing else of the project's loop.

    python -m training.trainer_example --model MODEL_DIR --data DATA_DIR --output_dir OUT [--gradient_checkpointing]
    torchrun --nproc_per_node 2 -m training.trainer_example --model MODEL_DIR --data DATA_DIR --output_dir OUT

MODEL_DIR: a HarmoCLIP folder with its processor (harmoclip-convert or a trained model); DATA_DIR: a folder with
`train.jsonl` (the JSONL manifest format, e.g. `python -m training.data.synthetic --out DATA_DIR`). The GR teacher is
the model itself (`--gr_teacher self_stop_grad`, the default here, or `self_with_grad`) or a cache of the starting
weights' crop embeddings (`--gr_teacher cached --teacher_cache DIR`, written by `harmoclip-cache-teacher`). Writes the
trained model to OUT/model and Trainer's log history to OUT/log_history.json (main process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from transformers import Trainer, TrainingArguments

from modeling_harmoclip import HarmoCLIPModel
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor
from training.data.data_jsonl import JsonlRegionDataset
from training.loop_batches import ModelBatchCollator
from training.teacher import TeacherCache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--gr_teacher", default="self_stop_grad", choices=["self_stop_grad", "self_with_grad", "cached"]
    )
    parser.add_argument("--teacher_cache", default=None)
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--max_boxes", type=int, default=20)
    parser.add_argument("--min_box_size", type=float, default=4.0)
    args = parser.parse_args(argv)

    model = HarmoCLIPModel.from_pretrained(args.model, gr_teacher=args.gr_teacher)
    processor = HarmoCLIPProcessor.from_pretrained(args.model).as_region_mode()
    dataset = JsonlRegionDataset(
        Path(args.data) / "train.jsonl", max_boxes=args.max_boxes, min_box_size=args.min_box_size, seed=0
    )
    cache = TeacherCache(args.teacher_cache) if args.teacher_cache else None
    collator = ModelBatchCollator(processor, model.config, teacher_cache=cache, return_loss=True)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        # gloo on the CPU under torchrun; a single process has no process group (Accelerate would look for one).
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.save_model(str(Path(args.output_dir) / "model"))
        history = {"log_history": trainer.state.log_history, "world_size": training_args.world_size}
        (Path(args.output_dir) / "log_history.json").write_text(json.dumps(history, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
