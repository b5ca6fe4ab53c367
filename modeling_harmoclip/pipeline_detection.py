"""Finding and outlining objects by name with HarmoCLIP, in transformers' own task formats: the
`zero-shot-object-detection` and `image-segmentation` pipelines that ship with every saved model.

    from transformers import pipeline

    detector = pipeline("zero-shot-object-detection", model="org/harmoclip-vitb16", trust_remote_code=True)
    detector("street.jpg", candidate_labels=["dog", "bicycle"], threshold=0.3)
    # [{"score": 0.81, "label": "dog", "box": {"xmin": 12, "ymin": 20, "xmax": 198, "ymax": 305}}, ...]
    detector([{"image": "a.jpg", "candidate_labels": ["dog"]}, {"image": "b.jpg", "candidate_labels": ["cat"]}])

    segmenter = pipeline("image-segmentation", model="org/harmoclip-vitb16", trust_remote_code=True)
    segmenter("street.jpg", candidate_labels=["dog", "bicycle"], image_size=448)
    # [{"score": 0.74, "label": "dog", "mask": <PIL.Image.Image mode=L, the image's size>}, ...]
    segmenter("street.jpg")  # no labels: COCO panoptic's 133 class names (`coco_panoptic_labels`)

Both read one pass of the image encoder (`HarmoCLIPModel.detect`): the label maps, the proposals drawn from them (or
the user's `boxes=`) and the region embedding of every box. Labels go through `pipeline_harmoclip.resolve_label_embeddings`
as region classification's do: reused across calls, or the caller's `label_embeds=`. `HarmoCLIPModel.save_pretrained` writes both tasks into the config's
`custom_pipelines` and copies this file, so `pipeline(task, model=folder_or_hub_id, trust_remote_code=True)` loads them
where the project is not installed. In one process with a model already loaded, build them directly:
`ZeroShotRegionDetectionPipeline(model=model, processor=processor)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.image_transforms import to_pil_image

from .coco_panoptic_labels import COCO_PANOPTIC_LABELS, prompt_name
from .detection import (
    MAP_THRESHOLDS,
    NMS_IOU,
    SEGMENTATION_THRESHOLD,
    WINDOW_SCALES,
    check_threshold,
)
from .hub_code import register_pipeline
from .image_processing_harmoclip import original_image_size
from .pipeline_harmoclip import RegionPresetPipeline
from .zero_shot import DEFAULT_BACKGROUND, DEFAULT_TEMPLATES, check_strings, check_top_k, encode_candidates

DETECTION_TASK = "zero-shot-object-detection"
SEGMENTATION_TASK = "image-segmentation"
_UNSET: Any = object()


class _DenseLabelPipeline(RegionPresetPipeline):
    """What detection and segmentation share: images (optionally at another `image_size`) in, one encoder pass through
    `HarmoCLIPModel.detect` per batch, label embeddings reused across calls (`resolve_label_embeddings`)."""

    def check_image_size(self, image_size: Any) -> int:
        """A positive multiple of the patch size (the model's input side for finer maps)."""
        patch = self.model.config.vision_config.patch_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch or image_size % patch:
            raise ValueError(f"`image_size` must be a positive multiple of the patch size {patch}, got {image_size!r}")
        return image_size

    def default_labels(self) -> tuple[list[str], list[str]] | None:
        """The (names returned, names prompted) used when a call gives no `candidate_labels`; None: they are required."""
        return None

    def _labels_of(self, labels: Any, where: str) -> list[str]:
        """One image's candidate labels: a list of strings or the stock pipelines' comma-separated string."""
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        return check_strings(labels, where)

    def _items(self, image: Any, candidate_labels: Any, boxes: Any) -> tuple[list[dict[str, Any]], bool]:
        """The call's inputs as one `{"image", "boxes", "candidate_labels"}` item per image (labels None where neither
        the item nor the call gives any), and whether a single image (not a list) was given. Labels inside an item win
        over the call's, as in the stock pipeline; per-image lists (`candidate_labels=[[...], [...]]`) go one per
        image."""
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        if not images:
            raise ValueError(f"the {self.task_name} pipeline needs at least one image, got {image!r}")
        if boxes is not None and (not single or isinstance(image, dict)):
            raise ValueError("with several images or dict items give `boxes` inside {'image': ..., 'boxes': ...} items")
        per_image = (
            isinstance(candidate_labels, (list, tuple))
            and len(candidate_labels) > 0
            and all(isinstance(labels, (list, tuple)) for labels in candidate_labels)
        )
        if per_image and len(candidate_labels) != len(images):
            raise ValueError(
                f"`candidate_labels` holds {len(candidate_labels)} label lists for {len(images)} images; give one per "
                "image or one list for all"
            )
        call_labels = None
        if candidate_labels is not None and not per_image:
            call_labels = self._labels_of(candidate_labels, "candidate_labels")
        items = []
        for index, entry in enumerate(images):
            item = dict(entry) if isinstance(entry, dict) else {"image": entry, "boxes": boxes if single else None}
            labels = item.get("candidate_labels")
            if labels is not None:
                item["candidate_labels"] = self._labels_of(labels, f"inputs[{index}]['candidate_labels']")
            elif per_image:
                item["candidate_labels"] = self._labels_of(candidate_labels[index], f"candidate_labels[{index}]")
            else:
                item["candidate_labels"] = call_labels
            items.append(item)
        return items, single

    def __call__(self, image: Any = None, candidate_labels: Any = None, **kwargs: Any) -> Any:
        if image is None and "images" in kwargs:  # the stock pipelines' keyword
            image = kwargs.pop("images")
        items, single = self._items(image, candidate_labels, kwargs.pop("boxes", None))
        label_sets = {None if item["candidate_labels"] is None else tuple(item["candidate_labels"]) for item in items}
        if len(label_sets) > 1:  # different labels per image: one call per image (one label set per encoder batch)
            if kwargs.get("label_embeds") is not None:
                raise ValueError("`label_embeds` needs the same `candidate_labels` for every image")
            return [self(item, **kwargs) for item in items]
        labels = items[0]["candidate_labels"]
        prompts = labels
        if labels is None:
            default = self.default_labels()
            if default is None:
                raise ValueError(f"the {self.task_name} pipeline needs `candidate_labels`, a list of label names")
            labels, prompts = default
        for item in items:
            item.pop("candidate_labels", None)
        label_embeds, background_embed = encode_candidates(
            self.model,
            self.tokenizer,
            prompts,
            kwargs.pop("background_label", DEFAULT_BACKGROUND),
            kwargs.pop("templates", DEFAULT_TEMPLATES),
            kwargs.pop("label_embeds", None),
        )
        kwargs.update(label_embeds=label_embeds, background_embed=background_embed)
        return super().__call__(items[0] if single else items, candidate_labels=labels, **kwargs)

    def preprocess(
        self, inputs: dict[str, Any], image_size: int | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        image, boxes = inputs.get("image"), inputs.get("boxes")
        if image is None:
            raise ValueError(f"the {self.task_name} pipeline needs an image, got None")
        image = self.read_image(
            image, timeout=timeout
        )  # upright (EXIF applied), as every entry point; unreadable: one line
        options = {"size": {"height": image_size, "width": image_size}} if image_size is not None else {}
        if boxes is not None and len(boxes) == 0:
            raise ValueError(
                f"`boxes` must hold at least one [x1, y1, x2, y2] box in the image's pixels, got {boxes!r}"
            )
        batch = self.processor(images=image, boxes=boxes, return_tensors="pt", **options)
        model_inputs = {
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
            "target_size": torch.tensor([original_image_size(image)]),
        }
        if boxes is not None:
            model_inputs.update(boxes=batch["boxes"], box_mask=batch["box_mask"])
        return model_inputs

    def _forward(
        self,
        model_inputs: dict[str, Any],
        label_embeds: torch.Tensor,
        background_embed: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        map_thresholds: Sequence[float] = MAP_THRESHOLDS,
        window_scales: Sequence[float] = WINDOW_SCALES,
    ) -> dict[str, Any]:
        pixel_values = model_inputs["pixel_values"]
        outputs = self.model.detect(
            pixel_values,
            label_embeds,
            background_embed,
            model_inputs.get("boxes"),
            model_inputs.get("box_mask"),
            interpolate_pos_encoding=interpolate_pos_encoding
            or pixel_values.shape[-1] != self.model.config.vision_config.image_size,
            map_thresholds=map_thresholds,
            window_scales=window_scales,
        )
        # "scores" first: the pipeline's batch splitter reads the batch size from the first entry.
        return {key: value for key, value in outputs.items()} | {"target_size": model_inputs["target_size"]}

    def _sanitize_parameters(
        self,
        candidate_labels: list[str] | None = None,
        label_embeds: torch.Tensor | None = None,
        background_embed: torch.Tensor | None = None,
        threshold: float | None = None,
        image_size: int | None = None,
        interpolate_pos_encoding: bool | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        if image_size is not None:
            preprocess["image_size"] = self.check_image_size(image_size)
        forward: dict[str, Any] = {}
        if label_embeds is not None:
            forward.update(label_embeds=label_embeds, background_embed=background_embed)
        if interpolate_pos_encoding is not None:
            if not isinstance(interpolate_pos_encoding, bool):
                raise TypeError(f"`interpolate_pos_encoding` must be a bool, got {interpolate_pos_encoding!r}")
            forward["interpolate_pos_encoding"] = interpolate_pos_encoding
        postprocess: dict[str, Any] = {"candidate_labels": candidate_labels} if candidate_labels is not None else {}
        if threshold is not None:
            postprocess["threshold"] = check_threshold(threshold)
        return preprocess, forward, postprocess


class ZeroShotRegionDetectionPipeline(_DenseLabelPipeline):
    """Finds objects by name, with no boxes given (proposals from the model's label maps) or in the user's boxes.

    Call: `detector(image, candidate_labels=[...])`, `detector([image, ...], candidate_labels=[...])` (or one label
    list per image, `candidate_labels=[[...], [...]]`), or `{"image": ..., "candidate_labels": [...], "boxes": [...]}`
    items, alone or in a list (an item's labels win over the call's), as the stock pipeline takes them.

    Args (call):
        candidate_labels: the label names (required; here or in the items).
        threshold: the least score kept, in [0, 1] (default 0.1); top_k: detections kept per image (all if None).
        boxes: the user's proposals `[[x1, y1, x2, y2], ...]` in the image's pixels (e.g. from SAM or a detector),
            scored instead of the model's own.
        nms_threshold: class-wise NMS IoU (default 0.5; None: none).
        map_thresholds: the levels each label's map is cut at for proposals (default 0.1, 0.2, 0.3, 0.5, 0.7);
            window_scales: square windows added, as fractions of the image side (default only the whole image).
        background_label: the label competing as background (default "background"; None: none).
        templates: prompt templates with '{}' (default `DEFAULT_TEMPLATES`); image_size: the model's input side (a
            multiple of the patch size; the position embedding is interpolated); batch_size: images per encoder pass.
    Returns:
        Per image a list `[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]` in the image's pixels, whole
        pixels (ints, truncated as the stock task's `box.int().tolist()`), best first (a list of such lists for a list
        of images).
    """

    task_name = DETECTION_TASK

    def _sanitize_parameters(
        self,
        candidate_labels: list[str] | None = None,
        label_embeds: torch.Tensor | None = None,
        background_embed: torch.Tensor | None = None,
        threshold: float | None = None,
        top_k: int | None = _UNSET,
        nms_threshold: float | None = _UNSET,
        map_thresholds: Sequence[float] | None = None,
        window_scales: Sequence[float] | None = None,
        image_size: int | None = None,
        interpolate_pos_encoding: bool | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess, forward, postprocess = super()._sanitize_parameters(
            candidate_labels, label_embeds, background_embed, threshold, image_size, interpolate_pos_encoding, timeout
        )
        for name, levels in (("map_thresholds", map_thresholds), ("window_scales", window_scales)):
            if levels is not None:
                if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
                    raise TypeError(f"`{name}` must be a list of numbers, got {levels!r}")
                forward[name] = tuple(levels)
        if top_k is not _UNSET:
            postprocess["top_k"] = check_top_k(top_k)
        if nms_threshold is not _UNSET:
            postprocess["nms_threshold"] = (
                None if nms_threshold is None else check_threshold(nms_threshold, "nms_threshold")
            )
        return preprocess, forward, postprocess

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        candidate_labels: list[str],
        threshold: float = 0.1,
        top_k: int | None = None,
        nms_threshold: float | None = NMS_IOU,
    ) -> list[dict[str, Any]]:
        found = self.processor.post_process_object_detection(
            model_outputs, threshold, model_outputs["target_size"].tolist(), nms_threshold, top_k
        )[0]
        return [
            {
                "score": float(score),
                "label": candidate_labels[int(label)],
                # Whole pixels as the stock task gives them (`box.int().tolist()`: truncated), after rounding to 1/1000
                # pixel: the float32 round trip through normalised boxes leaves noise below that (119.99998 is 120).
                "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(round(value, 3)) for value in box.tolist()))),
            }
            for score, label, box in zip(found["scores"], found["labels"], found["boxes"])
        ]


class DenseSegmentationPipeline(_DenseLabelPipeline):
    """Outlines objects by name: per label found, its mask at the image's size, from the model's upsampled label maps.

    Call: `segmenter(image, candidate_labels=[...])`, a list of images, items as the detector takes them, or an image
    alone (the stock task's call).

    Args (call):
        candidate_labels: the label names; without them COCO panoptic's 133 class names (returned as COCO names them,
            prompted by their words: `coco_panoptic_labels.prompt_name`).
        subtask: None or "semantic" (what this pipeline does); mask_threshold, overlap_mask_area_threshold: the stock
            options, checked to be in [0, 1]; as in the stock pipeline's semantic subtask they change nothing here.
        threshold: the least probability a pixel's best label needs, in [0, 1] (default 0.3, `SEGMENTATION_THRESHOLD`;
            0: the background label alone decides, see `HarmoCLIPProcessor.post_process_semantic_segmentation`).
        background_label, templates, batch_size: as in `ZeroShotRegionDetectionPipeline`.
        image_size: the model's input side for finer maps (a multiple of the patch size; CLIPSelf evaluates dense tasks
            at 1024 px); interpolate_pos_encoding: forced on whenever `image_size` differs from the model's own.
    Returns:
        Per image a list `[{"score", "label", "mask"}]`, one per label that wins at least one pixel, in label order:
        `mask` a PIL image (mode "L", 255 inside) of the original size, `score` the label's mean probability over it.
    """

    task_name = SEGMENTATION_TASK

    def default_labels(self) -> tuple[list[str], list[str]]:
        """With an image alone (the stock task's call): COCO panoptic's 133 class names, prompted by their words
        (`coco_panoptic_labels`)."""
        return list(COCO_PANOPTIC_LABELS), [prompt_name(name) for name in COCO_PANOPTIC_LABELS]

    def _sanitize_parameters(
        self,
        subtask: str | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        # The stock task's options. This pipeline is semantic segmentation (one label per pixel): `subtask` may name
        # it; `mask_threshold` and `overlap_mask_area_threshold` are checked and, as in the stock pipeline's semantic
        # subtask, change nothing (a pixel's label is its best label's, so masks are binary and never overlap).
        if subtask is not None and subtask != "semantic":
            raise ValueError(
                f"`subtask` must be 'semantic' (or None) for the HarmoCLIP {SEGMENTATION_TASK} pipeline, got {subtask!r}"
            )
        if mask_threshold is not None:
            check_threshold(mask_threshold, "mask_threshold")
        if overlap_mask_area_threshold is not None:
            check_threshold(overlap_mask_area_threshold, "overlap_mask_area_threshold")
        return super()._sanitize_parameters(**kwargs)

    def preprocess(self, inputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if inputs.get("boxes") is not None:
            raise ValueError(f"the {SEGMENTATION_TASK} pipeline takes no `boxes`")
        return super().preprocess(inputs, **kwargs)

    def postprocess(
        self, model_outputs: dict[str, Any], candidate_labels: list[str], threshold: float = SEGMENTATION_THRESHOLD
    ) -> list[dict[str, Any]]:
        label_map, probabilities = self.processor.post_process_semantic_segmentation(
            model_outputs, model_outputs["target_size"].tolist(), threshold, return_probabilities=True
        )[0]
        results = []
        for label in label_map.unique().tolist():
            if label < 0:
                continue
            inside = label_map == label
            mask = to_pil_image((inside.to(torch.uint8) * 255).numpy()[..., None]).convert("L")
            score = float(probabilities[label][inside].mean())
            results.append({"score": score, "label": candidate_labels[label], "mask": mask})
        return results


PIPELINE_CLASSES = {DETECTION_TASK: ZeroShotRegionDetectionPipeline, SEGMENTATION_TASK: DenseSegmentationPipeline}


# Saved models carry these pipelines: their `custom_pipelines` entries and this file (`hub_code`).
for _task, _pipeline_class in PIPELINE_CLASSES.items():
    register_pipeline(_task, _pipeline_class)


__all__ = [
    "DETECTION_TASK",
    "SEGMENTATION_TASK",
    "DEFAULT_BACKGROUND",
    "ZeroShotRegionDetectionPipeline",
    "DenseSegmentationPipeline",
    "PIPELINE_CLASSES",
    "encode_candidates",
]
