"""Object-centric views mixed into scene images, as web data mixes close-ups of one object with scenes.

With `fraction` f, each training sample is, with probability f, replaced by a view of one of its phrase-linked boxes:
the box's crop of the original image (enlarged `scale` times about its centre and clipped to the image, as the
crop-and-encode baseline cuts it), captioned with the box's phrase alone ("small red circle"), the box kept in the
crop's pixels. It works on any source with boxes and phrases (JSONL manifests, COCO, Flickr30k Entities). A CLIP
trained on such a mix learns to embed one-object images globally: the property that makes the global embedding of a
crop a better box classifier than the dense region embedding, which GR distils.

Which samples are views, and of which box, is a function of (seed, epoch, index), like the caption choice.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from modeling_harmoclip.image_processing_harmoclip import crop_windows

from .data_common import RegionSample, SkippedSample

VIEW_STREAM = 104729  # a random stream of its own: the base data set's draws (captions) are unchanged


def check_object_view_options(fraction: float, scale: float) -> None:
    """A `ValueError` naming `fraction` or `scale` unless 0 <= fraction <= 1 and scale is a finite number >= 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`object_views` must be a fraction in [0, 1], got {fraction!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1.0:
        raise ValueError(f"`object_view_scale` must be a finite number >= 1, got {scale!r}")


def object_view(sample: RegionSample, box_number: int, scale: float) -> RegionSample:
    """The object-centric view of box `box_number` of `sample` (it must have a phrase): its crop, enlarged `scale`
    times and clipped to the image, captioned with the phrase; the one box in the crop's pixel coordinates."""
    phrase = sample.phrases[box_number]
    if not phrase:
        raise ValueError(f"`box_number` {box_number} of {sample.image_id} has no phrase to caption its view")
    x0, y0, x1, y1 = crop_windows(
        torch.tensor([sample.boxes[box_number]], dtype=torch.float64), scale, sample.image.height, sample.image.width
    )[0]
    bx1, by1, bx2, by2 = sample.boxes[box_number]
    box = [
        min(max(bx1 - x0, 0.0), x1 - x0),
        min(max(by1 - y0, 0.0), y1 - y0),
        min(max(bx2 - x0, 0.0), x1 - x0),
        min(max(by2 - y0, 0.0), y1 - y0),
    ]
    index = sample.box_indices[box_number] if sample.box_indices else box_number
    return RegionSample(
        image=sample.image.crop((x0, y0, x1, y1)),
        caption=phrase,
        boxes=[box],
        phrase_spans=[(0, len(phrase))],
        phrases=[phrase],
        image_id=f"{sample.image_id}#view{index}",
        path=sample.path,
        box_indices=[index],
        labels=[sample.labels[box_number]] if sample.labels else [None],
        categories=[sample.categories[box_number]] if sample.categories else [None],
    )


class ObjectViewMix(Dataset):
    """`base` with a fraction of its samples replaced by object-centric views (see the module docstring).

    Args:
        base: a map-style region data set (`RegionDataset` or `RegionConcatDataset`).
        fraction: probability that a sample becomes a view of one of its phrase-linked boxes (a sample without one
            stays a scene).
        scale: enlargement of the box about its centre before cropping (1.5: the crop-and-encode baseline's).
        seed: with the epoch and the index, decides which samples are views and of which box.
    """

    def __init__(self, base: Dataset, fraction: float, scale: float = 1.5, seed: int = 0):
        check_object_view_options(fraction, scale)
        self.base, self.fraction, self.scale, self.seed = base, float(fraction), float(scale), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> RegionSample | SkippedSample:
        sample = self.base[index]
        if isinstance(sample, SkippedSample) or self.fraction == 0.0:
            return sample
        rng = np.random.default_rng([self.seed, self.epoch, index % len(self), VIEW_STREAM])
        if rng.random() >= self.fraction:
            return sample
        linked = [number for number, phrase in enumerate(sample.phrases) if phrase]
        if not linked:
            return sample
        return object_view(sample, linked[int(rng.integers(len(linked)))], self.scale)
