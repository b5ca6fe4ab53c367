"""Streamed training data (`data_format: hf` with `streaming: true`): every process reads its own part of a
`datasets.IterableDataset`, and a checkpoint records where each process is in its stream.

Who does what:
- `StreamBatchSampler` runs in the main process of each rank. It takes this rank's part of the stream
  (`datasets.distributed.split_dataset_by_node`: whole shards when their number divides by the number of processes,
  else every n-th row), reads rows (cheap: Arrow, Parquet or tar bytes, images left encoded), groups them into
  batches and remembers the stream's `state_dict()` after each batch it hands out.
- `StreamRows` decodes the rows of a batch (image decoding, box checks, caption choice) in the DataLoader's workers,
  and `StreamCollate` turns them into model inputs with the usual collator, tagging the batch with its number.
- The training loop asks `position_after(number)` for the position after the batch it used, and puts it in the
  checkpoint; `set_epoch(epoch, position)` resumes from it. As the rows are read in the main process, the order of
  the batches, and so the position, does not depend on the number of workers.

Over one epoch every row is read by exactly one process; a batch is only ever formed from `batch_size` rows (an
incomplete last batch is dropped, as the map-style sampler drops it) and the epoch ends for all processes when the
first of them runs out (see `TrainingBatches` in training/train.py). Rows are seeded by (seed, epoch, row number in
this process's stream), so the caption drawn for an image is the same in an interrupted and an uninterrupted run.
With `shuffle_buffer > 0` rows pass through `datasets`' shuffle buffer; its contents are not in the checkpoint, so a
resumed run then continues with a refilled buffer (the same rows, in another order) rather than identically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from datasets.distributed import split_dataset_by_node
from torch.utils.data import Dataset

from .data_common import RegionSample, SkippedSample
from .data_hf import HFRecordDecoder, image_root_of, load_records

# One row handed to a worker: (epoch, batch number, row number in this process's stream for the epoch, row).
StreamItem = tuple[int, int, int, dict[str, Any]]


@dataclass
class RegionStream:
    """A streamed training source: the rows and the decoder that makes samples of them."""

    rows: datasets.IterableDataset
    decoder: HFRecordDecoder

    @classmethod
    def open(
        cls,
        source: str,
        columns: dict[str, str] | None = None,
        image_root: str | None = None,
        cache_dir: str | None = None,
        **options: Any,
    ) -> RegionStream:
        """`source` as in `data_hf.load_records`; `options` are the data sets' (`seed`, `max_boxes`, `strict`, ...)."""
        rows, resolved = load_records(source, streaming=True, columns=columns, cache_dir=cache_dir)
        return cls(rows, HFRecordDecoder(resolved, image_root_of(source, image_root), str(source), **options))


class StreamBatchSampler:
    """Batches of this process's rows, as the `batch_sampler` of a DataLoader over `StreamRows` (see the module
    docstring). `position_after(n)` is the resumable position after batch `n`: {"stream": state_dict, "rows": count}."""

    def __init__(
        self,
        rows: datasets.IterableDataset,
        batch_size: int,
        num_processes: int,
        process_index: int,
        seed: int = 0,
        shuffle_buffer: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        stream = split_dataset_by_node(rows, rank=process_index, world_size=num_processes)
        self.stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else stream
        self.batch_size = batch_size
        self.epoch = 0
        self.start: dict[str, Any] | None = None
        self._positions: dict[int, dict[str, Any]] = {}

    def set_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> None:
        """Starts epoch `epoch` at its beginning, or after the batch whose `position_after` was `position`."""
        self.epoch, self.start = int(epoch), position

    def __iter__(self) -> Iterator[list[StreamItem]]:
        self.stream.set_epoch(self.epoch)
        row_number = 0
        if self.start is not None:
            self.stream.load_state_dict(self.start["stream"])
            row_number = int(self.start["rows"])
        self._positions.clear()
        batch: list[StreamItem] = []
        number = 0
        for row in self.stream:
            batch.append((self.epoch, number, row_number, row))
            row_number += 1
            if len(batch) == self.batch_size:
                self._positions[number] = {"stream": self.stream.state_dict(), "rows": row_number}
                yield batch
                batch, number = [], number + 1

    def position_after(self, number: int) -> dict[str, Any]:
        """The position after batch `number` of the current epoch (positions of earlier batches are forgotten)."""
        for old in [n for n in self._positions if n < number]:
            del self._positions[old]
        return self._positions[number]


class StreamRows(Dataset):
    """Decodes the rows `StreamBatchSampler` hands out: item (epoch, batch, row number, row) -> (batch, sample)."""

    def __init__(self, decoder: HFRecordDecoder):
        self.decoder = decoder

    def __getitem__(self, item: StreamItem) -> tuple[int, RegionSample | SkippedSample]:
        epoch, number, row_number, row = item
        rng = np.random.default_rng([self.decoder.seed, epoch, row_number])
        return number, self.decoder.load_or_skip(row, rng)

    def __len__(self) -> int:
        raise TypeError("StreamRows is indexed by the rows its batch sampler gives; it has no length")


class StreamCollate:
    """`collate_fn` for `StreamRows`: the wrapped collator's batch plus `stream_batch`, the batch's number."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: Sequence[tuple[int, RegionSample | SkippedSample]]) -> Any:
        batch = self.collator([sample for _, sample in items])
        batch["stream_batch"] = items[0][0]
        return batch
