"""What the harmony benchmark's tests share: the figures every row reports, written out by hand, and the seeds of the
quick settings."""

from __future__ import annotations

from experiments.harmony.rows import QUICK_SETTINGS

FIGURES = (
    "i2t_R@1",
    "t2i_R@1",
    "mean_R@1",
    "box_top1_dense",
    "box_top1_crop",
    "box_top1_dense_seen",
    "box_top1_dense_held_out",
    "grounding_annotated",
    "grounding_proposals",
)
SEEDS = list(QUICK_SETTINGS["seeds"])
