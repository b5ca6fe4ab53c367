"""Compute the GR teacher's crop embeddings once, ahead of training, so that GR costs nothing at training time.

    python -m training.cache_teacher --config configs/synthetic_tiny.yaml --cache-dir outputs/teacher_cache
    python training/train.py --config configs/synthetic_tiny.yaml --gr_teacher cached --teacher_cache outputs/teacher_cache

The teacher is the run's starting weights (`init_from`, or the from-scratch initialisation of `seed`), the boxes are
those the training data set yields (same `max_boxes` / `min_box_size`), and their crops the processor's crops of the
original images at `gr_crop_scale`, as in training, so the cache holds exactly what the frozen teacher would compute
during training. The folder is written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from plumbing.atomic_files import atomic_directory
from plumbing.command_line import run_command, setup_logging
from training.builders import (
    build_dataset_for_split,
    build_datasets,
    build_model_and_processor,
    region_collator,
)
from training.config import TrainConfig, build_argument_parser, config_from_args
from training.teacher import INDEX_FILE, teacher_cache_settings

logger = logging.getLogger("harmoclip.cache_teacher")


def build_teacher_cache_folder(
    config: TrainConfig,
    cache_dir: str | Path,
    batch_size: int = 32,
    images_per_shard: int = 2048,
    overwrite: bool = False,
) -> Path:
    """Writes the cache for the training split of `config` into `cache_dir`; returns it."""
    model, processor = build_model_and_processor(config)
    model.eval()
    if config.data_format == "synthetic":
        build_datasets(config, processor)  # generates the data set if needed
    # A streamed source is read here as a whole (map-style): the cache is keyed by image id, not by stream position.
    dataset = build_dataset_for_split(dataclasses.replace(config, streaming=False), "train")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=region_collator(config, processor, with_crops=True),
        num_workers=config.num_workers,
    )
    images: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []
    with atomic_directory(cache_dir, overwrite=overwrite) as folder:

        def flush() -> None:
            if shard:
                name = f"shard-{len(set(images.values())):05d}.safetensors"
                save_file(dict(shard), str(folder / name))
                images.update({image_id: name for image_id in shard})
                shard.clear()

        for batch in tqdm(loader, desc="teacher crops", unit="batch"):
            skipped.extend(batch.get("skipped", []))
            if "pixel_values" not in batch:
                continue
            with torch.no_grad():
                crops = model.get_crop_features(batch["crop_pixel_values"], batch["crop_mask"])
            for row, image_id in enumerate(batch["image_ids"]):
                indices = batch["box_indices"][row]
                valid = (indices >= 0) & batch["crop_mask"][row]
                size = int(indices.max()) + 1 if valid.any() else 0
                table = torch.full((size, crops.shape[-1]), float("nan"))
                table[indices[valid]] = crops[row, valid]
                shard[image_id] = table.contiguous()
            if len(shard) >= images_per_shard:
                flush()
        flush()
        index: dict[str, Any] = {
            "dim": int(model.config.projection_dim),
            "settings": teacher_cache_settings(config, processor),
            "images": images,
            "skipped": skipped,
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=1))
    logger.info("teacher cache: %d images in %s (%d unreadable skipped)", len(images), cache_dir, len(skipped))
    return Path(cache_dir)


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-cache-teacher` command; returns the exit code."""

    def run() -> str:
        parser = build_argument_parser(__doc__.split("\n\n")[0])
        parser.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", required=True, help="folder to write")
        parser.add_argument("--cache-batch-size", dest="cache_batch_size", type=int, default=32)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")
        args = parser.parse_args(argv)
        if args.cache_batch_size <= 0:
            raise ValueError(f"`--cache-batch-size` must be > 0, got {args.cache_batch_size}")
        setup_logging()
        config = config_from_args(args)
        folder = build_teacher_cache_folder(
            config, args.cache_dir, batch_size=args.cache_batch_size, overwrite=args.overwrite
        )
        return f"wrote the teacher cache {folder}"

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
