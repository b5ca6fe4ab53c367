"""configs/vitb16_finetune.yaml states FineCLIP's recipe so that it scales: every row of its GPU table keeps the global
batch of 256, and max_steps is FineCLIP's 10 epochs of COCO train2017 at that batch."""

from __future__ import annotations

import re

from conftest import ROOT

COCO_TRAIN2017_IMAGES = 118_287
GLOBAL_BATCH = 256  # FineCLIP: 8 GPUs x 32 (scripts/train_vitb16.sh)
EPOCHS = 10


def test_finetune_config_matches_fineclips_schedule_for_any_number_of_gpus():
    from training.config import load_config

    path = ROOT / "configs" / "vitb16_finetune.yaml"
    config = load_config(path)
    steps_per_epoch = COCO_TRAIN2017_IMAGES // GLOBAL_BATCH  # the last partial batch is dropped
    assert config.max_steps == EPOCHS * steps_per_epoch == 4620
    assert config.warmup_steps == 1000 and config.learning_rate == 1e-5 and config.weight_decay == 0.1
    # The shipped values are the 8-process row.
    assert config.batch_size * 8 * config.gradient_accumulation_steps == GLOBAL_BATCH
    rows = re.findall(r"^#\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)", path.read_text(), flags=re.MULTILINE)
    assert {int(row[0]) for row in rows} == {1, 2, 8}
    for gpus, batch_size, accumulation, global_batch, contrastive in (tuple(map(int, row)) for row in rows):
        assert gpus * batch_size * accumulation == global_batch == GLOBAL_BATCH
        assert contrastive == gpus * batch_size
