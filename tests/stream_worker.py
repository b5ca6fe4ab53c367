"""The streamed training batches of one epoch under torchrun, for the test that every row is used once.

    torchrun --nproc_per_node 2 tests/stream_worker.py --data SHARDS --out ids.json [--batch-size 2 --workers 0]

Each process builds the training loop's own loader (`training.train.build_loader`) and `TrainingBatches` on a
streamed `data_format: hf` source, takes every batch of epoch 0 and the first of epoch 1, and the main process writes
{"processes", "epoch0": [per process: [image ids of each batch]], "epoch1_batches"}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch.distributed
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import CLIPTokenizer

from conftest import BPE_PATH, TINY_MERGES, tiny_processor
from conversion.clip_vocab import write_clip_tokenizer_files
from training.builders import build_datasets
from training.config import TrainConfig
from training.data.collate import RegionCollator
from training.train import TrainingBatches, build_loader, end_distributed_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    accelerator = Accelerator(cpu=True)
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer_files(BPE_PATH, Path(folder), num_merges=TINY_MERGES)
        processor = tiny_processor(CLIPTokenizer.from_pretrained(folder, model_max_length=77), region_mode=True)
    config = TrainConfig(
        data_format="hf",
        train_data=args.data,
        streaming=True,
        batch_size=args.batch_size,
        num_workers=args.workers,
        image_size=32,
    )
    train_set, _, _ = build_datasets(config, processor, accelerator.main_process_first)
    loader, sampler = build_loader(
        config, train_set, RegionCollator(processor), accelerator.num_processes, accelerator.process_index
    )
    stream = TrainingBatches(loader, sampler, train_set, accelerator, config)
    batches = iter(stream)
    epoch0, epoch1 = [], 0
    for batch in batches:
        if stream.epoch == 0:
            epoch0.append(list(batch["image_ids"]))
        else:
            epoch1 += 1
            break
    gathered = gather_object([{"epoch0": epoch0, "epoch1_batches": epoch1}])
    end_distributed_run(accelerator, batches)
    if accelerator.is_main_process:
        result = {
            "processes": accelerator.num_processes,
            "epoch0": [g["epoch0"] for g in gathered],
            "epoch1_batches": [g["epoch1_batches"] for g in gathered],
            "process_group_left": torch.distributed.is_initialized(),
        }
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
