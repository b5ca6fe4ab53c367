"""Region classification with HarmoCLIP: the one implementation of prompt-ensembled label embeddings, region scoring
and dense similarity maps, and the `region-classification` pipeline that ships with every saved model.

    from transformers import pipeline

    classifier = pipeline("region-classification", model="org/harmoclip-vitb16", trust_remote_code=True)
    classifier("street.jpg", boxes=[[10, 20, 200, 310], [220, 40, 400, 300]], candidate_labels=["dog", "bicycle"])
    # [{"box": {"xmin": 10.0, "ymin": 20.0, "xmax": 200.0, "ymax": 310.0}, "label": "dog", "score": 0.93,
    #   "labels": ["dog", "bicycle"], "scores": [0.93, 0.07]}, ...]

`HarmoCLIPModel.save_pretrained` copies this file beside the model and writes the config's `custom_pipelines` entry,
so `pipeline("region-classification", model=folder_or_hub_id, trust_remote_code=True)` finds it. The evaluation's box
classification, its pictures and the demo Space call the functions below, so they all score a box the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Pipeline
from transformers.image_utils import is_pil_image

from .hub_code import register_pipeline
from .image_io import read_image
from .image_processing_harmoclip import original_image_size
from .zero_shot import (  # re-exported: their home is zero_shot
    DEFAULT_TEMPLATES,
    LABEL_CACHE_SIZE,
    TEXT_BATCH_SIZE,
    check_strings,
    check_templates,
    clear_label_cache,
    label_embeddings,
    label_probabilities,
    model_device,
    prompt_ensemble_embeddings,
    resolve_label_embeddings,
    similarity_probabilities,
)

PIPELINE_TASK = "region-classification"
# "Not given" for `top_k`, whose None means "every label".
_UNSET: Any = object()


@torch.no_grad()
def dense_similarity(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Heatmaps: the cosine similarity of every patch of `image` with each label's prompt-ensembled embedding.

    The image is resized to a square without cropping (the processor's region preset), so the maps cover all of it.

    Args:
        model: a HarmoCLIP model; processor: its `HarmoCLIPProcessor`; image: a PIL image, array or tensor.
        label_embeds: (L, D) the labels' embeddings from `label_embeddings`, when already computed; otherwise
            `resolve_label_embeddings` computes them once per model, labels and templates.
    Returns:
        (L, h, w) float32 on the CPU, h x w the patch grid.
    """
    pixel_values = processor.as_region_mode()(images=image, return_tensors="pt")["pixel_values"]
    parameter = next(model.parameters())
    dense = model.get_dense_features(pixel_values.to(device=parameter.device, dtype=parameter.dtype))[0]  # (D, h, w)
    label_embeds = resolve_label_embeddings(model, processor.tokenizer, labels, templates, label_embeds)
    return torch.einsum("dhw,ld->lhw", dense.float(), label_embeds.float().to(dense.device)).cpu()


@torch.no_grad()
def dense_probabilities(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label maps: for every patch of `image`, the softmax over `labels` of ``logit_scale * cos(patch, label)``, the
    scoring region classification gives a box (`label_probabilities`), here per patch (a zero-shot segmentation).

    Unlike the raw `dense_similarity`, a label's map is relative to the other labels: whatever every label shares
    (for instance a background patch that is equally close to all of them) cancels, so the map lights the patches
    that are this label rather than another.

    Returns:
        (L, h, w) float32 on the CPU, summing to 1 over L at every patch; h x w the patch grid.
    """
    return similarity_to_probabilities(
        dense_similarity(model, processor, image, labels, templates, label_embeds), model
    )


def similarity_to_probabilities(similarity: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(L, h, w) cosine maps (`dense_similarity`) -> each label's probability among the L at every patch: the softmax
    over labels at the model's own temperature, as `label_probabilities` scores a box."""
    return similarity_probabilities(similarity, model.logit_scale.exp(), dim=0)


class RegionPresetPipeline(Pipeline):
    """What every HarmoCLIP pipeline shares: a `HarmoCLIPProcessor` switched to its square, crop-free region preset
    (no box or object is ever cut by a centre crop, the whole image is seen), and images read upright."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    task_name = ""  # the subclass's task, for error messages

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if not callable(getattr(self.processor, "as_region_mode", None)):
            raise TypeError(
                f"the {self.task_name} pipeline needs a HarmoCLIPProcessor, got {type(self.processor).__name__}"
            )
        self.processor = self.processor.as_region_mode()
        self.tokenizer, self.image_processor = self.processor.tokenizer, self.processor.image_processor

    @staticmethod
    def read_image(image: Any, timeout: float | None = None) -> Any:
        """The image (path, URL or PIL image) as this pipeline reads it: upright RGB (`image_io.read_image`). Callers
        that draw on the image or check boxes against its size (the Space) use this frame."""
        return read_image(image, timeout=timeout)


class RegionClassificationPipeline(RegionPresetPipeline):
    """Labels given boxes of an image among free-text candidate labels, from HarmoCLIP's region embeddings (one pass
    of the image encoder for all boxes).

    Call: `classifier(image, boxes=[[x1, y1, x2, y2], ...], candidate_labels=[...])`, or a list of
    `{"image": ..., "boxes": [...]}` for several images, `batch_size=` images per pass of the image encoder (images
    with fewer boxes are padded with `box_mask`; the results equal one image per pass). The labels are encoded once
    per model, labels and templates and reused by later calls (`resolve_label_embeddings`).

    Args (call):
        image: a path, URL, PIL image, array or tensor.
        boxes: the boxes in the image's pixels, `[x1, y1, x2, y2]` (or COCO `[x, y, w, h]` with `box_format="xywh"`).
        candidate_labels: the label names.
        templates: prompt templates with '{}' (default `DEFAULT_TEMPLATES`, a prompt ensemble).
        top_k: labels kept per box (default 5; all if None).
        label_embeds: (L, D) embeddings of `candidate_labels` computed already (`label_embeddings`); nothing is
            encoded.
        batch_size: images per forward pass (transformers' pipeline batching; default 1).
    Returns:
        Per image a list, one dict per box in box order: `{"box": {"xmin", "ymin", "xmax", "ymax"}` in the image's
        pixels, `"label"` / `"score"`: the best label and its probability, `"labels"` / `"scores"`: the `top_k` best,
        best first}`. Boxes left empty inside the image are dropped with a warning.
    """

    task_name = PIPELINE_TASK

    def encode_labels(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """(L, D) prompt-ensembled label embeddings on the model's device, reused across calls
        (`resolve_label_embeddings`)."""
        return resolve_label_embeddings(self.model, self.tokenizer, labels, templates)

    def label_probabilities(self, embeds: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
        """(..., L) probabilities of (..., D) region or image embeddings among (L, D) labels, at the model's
        temperature (`label_probabilities`)."""
        return label_probabilities(embeds, label_embeds, self.model.logit_scale.exp())

    def dense_similarity(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """(L, h, w) similarity maps of the image with each label (`dense_similarity`)."""
        return dense_similarity(self.model, self.processor, image, labels, templates)

    def dense_probabilities(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """(L, h, w) per-patch probabilities of each label among `labels` (`dense_probabilities`)."""
        return dense_probabilities(self.model, self.processor, image, labels, templates)

    def __call__(
        self, image: Any, boxes: Any = None, candidate_labels: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        if candidate_labels is None:
            raise ValueError(f"the {PIPELINE_TASK} pipeline needs `candidate_labels`, a list of label names")
        candidate_labels = check_strings(candidate_labels, "candidate_labels")
        if isinstance(image, (list, tuple)) and image and all(isinstance(item, dict) for item in image):
            if boxes is not None:
                raise ValueError("give `boxes` inside each {'image': ..., 'boxes': ...} item, not as an argument")
            inputs: Any = [dict(item) for item in image]
        else:
            inputs = {"image": image, "boxes": boxes}
        templates = kwargs.pop("templates", DEFAULT_TEMPLATES)
        kwargs["label_embeds"] = resolve_label_embeddings(
            self.model, self.tokenizer, candidate_labels, templates, kwargs.pop("label_embeds", None)
        )
        return super().__call__(inputs, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels: list[str] | None = None,
        label_embeds: torch.Tensor | None = None,
        top_k: int | None = _UNSET,
        box_format: str | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess = {
            key: value for key, value in (("box_format", box_format), ("timeout", timeout)) if value is not None
        }
        forward = {"label_embeds": label_embeds} if label_embeds is not None else {}
        postprocess: dict[str, Any] = {"candidate_labels": candidate_labels} if candidate_labels is not None else {}
        if top_k is not _UNSET:
            postprocess["top_k"] = top_k
        return preprocess, forward, postprocess

    def preprocess(
        self, inputs: dict[str, Any], box_format: str = "xyxy", timeout: float | None = None
    ) -> dict[str, Any]:
        image, boxes = inputs.get("image"), inputs.get("boxes")
        if image is None:
            raise ValueError(f"the {PIPELINE_TASK} pipeline needs an image, got None")
        if isinstance(image, (str, os.PathLike)) or is_pil_image(image):
            image = self.read_image(image, timeout=timeout)  # upright (EXIF applied); unreadable: one line
        if boxes is None or len(boxes) == 0:
            raise ValueError(
                f"`boxes` must hold at least one [x1, y1, x2, y2] box in the image's pixels, got {boxes!r}"
            )
        batch = self.processor(images=image, boxes=boxes, box_format=box_format, return_tensors="pt")
        return {
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
            "boxes": batch["boxes"],
            "box_mask": batch["box_mask"],
            "target_size": original_image_size(image),
        }

    def _forward(self, model_inputs: dict[str, Any], label_embeds: torch.Tensor) -> dict[str, Any]:
        region_embeds = self.model.get_region_features(
            model_inputs["pixel_values"], model_inputs["boxes"], model_inputs["box_mask"]
        )
        probabilities = self.label_probabilities(region_embeds, label_embeds)
        return {key: model_inputs[key] for key in ("boxes", "box_mask", "target_size")} | {
            "probabilities": probabilities
        }

    def postprocess(
        self, model_outputs: dict[str, Any], candidate_labels: list[str], top_k: int | None = 5
    ) -> list[dict[str, Any]]:
        return self.processor.post_process_region_classification(
            model_outputs["probabilities"],
            candidate_labels,
            model_outputs["boxes"],
            [model_outputs["target_size"]],
            model_outputs["box_mask"],
            top_k,
        )[0]


# Saved models carry this pipeline (its `custom_pipelines` entry and this file); in-process use with objects loaded.
register_pipeline(PIPELINE_TASK, RegionClassificationPipeline, in_process=True)

__all__ = [
    "PIPELINE_TASK",
    "DEFAULT_TEMPLATES",
    "RegionPresetPipeline",
    "RegionClassificationPipeline",
    "label_embeddings",
    "resolve_label_embeddings",
    "clear_label_cache",
    "prompt_ensemble_embeddings",
    "label_probabilities",
    "dense_probabilities",
    "similarity_to_probabilities",
    "dense_similarity",
    "check_templates",
    "check_strings",
    "model_device",
    "TEXT_BATCH_SIZE",
    "LABEL_CACHE_SIZE",
]
