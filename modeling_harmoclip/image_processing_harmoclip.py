"""HarmoCLIP's image processor: CLIP's, plus where boxes land and how results go back to the original pixels.

`HarmoCLIPImageProcessor` is transformers' CLIP image processor (torchvision-backed where torchvision is installed,
PIL-backed otherwise; the same settings either way) with what box tasks need from the image side, as OWLv2's image
processor carries its own post-processing:

- the resize geometry and its inverse (`box_geometry`, `inverse_geometry`): the map from an image's pixels to the
  frame of its `pixel_values`, computed by the same function the resize itself uses (`resized_image_size`; the
  geometry's pieces are in `image_geometry.py`);
- the crops of the original image (`cut_crops`): each box enlarged about its centre, cut and resized to the model's
  input size (the GR teacher's input and the crop-and-encode baseline's);
- every `post_process_*`: region classification, object detection (OWLv2's signature) and semantic segmentation.

`HarmoCLIPProcessor` joins it with the tokenizer and forwards the `post_process_*` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoImageProcessor
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import ChannelDimension, SizeDict
from transformers.utils import is_torchvision_available

from .box_ops import NMS_IOU
from .configuration_harmoclip import HarmoCLIPConfig
from .detection import check_target_sizes, select_detections, semantic_label_map
from .image_geometry import (  # re-exported: their home is image_geometry
    BoxGeometry,
    check_crop_options,
    crop_shift,
    crop_windows,
    cut_window,
    original_image_size,
    resized_image_size,
)
from .zero_shot import check_strings, check_top_k

if is_torchvision_available():
    from transformers import CLIPImageProcessor as _CLIPImageProcessor
else:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as _CLIPImageProcessor

# Enlargement of a box about its centre before its crop is cut, as CLIPSelf and FineCLIP cut their teacher crops.
DEFAULT_CROP_SCALE = 1.5


class HarmoCLIPImageProcessor(_CLIPImageProcessor):
    r"""
    CLIP's image processor (shortest-edge resize, centre crop, rescale, normalise; every setting and keyword as CLIP's)
    with the box geometry, the crops of the original image and the post-processing of HarmoCLIP's outputs.

    Saved by `save_pretrained` as `HarmoCLIPImageProcessor` (its code file beside it, `AutoImageProcessor` in
    `auto_map`); `HarmoCLIPImageProcessor.from_clip` turns a plain CLIP image processor (as older folders carry) into
    one with the same settings.
    """

    @classmethod
    def from_clip(cls, image_processor: Any) -> HarmoCLIPImageProcessor:
        """This class with the settings of a CLIP image processor (either backend); a HarmoCLIP one is returned as is."""
        if isinstance(image_processor, HarmoCLIPImageProcessor):
            return image_processor
        return cls(**_settings(image_processor))

    def to_clip(self) -> Any:
        """A plain CLIP image processor (this one's backend) with the same settings: what a folder served without
        remote code carries."""
        return _CLIPImageProcessor(**_settings(self))

    def resize(self, image: Any, size: SizeDict, *args: Any, **kwargs: Any) -> Any:
        """CLIP's resize to the (height, width) of `resized_image_size`: the one computation of the output size, which
        `box_geometry` reads as well. `image`: channels-first (C, H, W) or (B, C, H, W)."""
        height, width = image.shape[-2:]
        new_height, new_width = resized_image_size(int(height), int(width), size)
        return super().resize(image, SizeDict(height=new_height, width=new_width), *args, **kwargs)

    # ------------------------------------------------------------------ geometry

    def box_geometry(self, image: Any, images_kwargs: dict[str, Any] | None = None) -> BoxGeometry:
        """The map from `image`'s pixels to the frame of its `pixel_values`, from this image processor's settings
        (overridden by `images_kwargs`, as in a call)."""
        options = dict(images_kwargs or {})

        def setting(name: str) -> Any:
            return options[name] if options.get(name) is not None else getattr(self, name, None)

        height, width = original_image_size(image, setting("input_data_format"))
        if setting("do_pad"):
            raise ValueError("HarmoCLIPProcessor cannot place boxes in padded images: set `do_pad=False`")
        new_height, new_width = height, width
        if setting("do_resize"):
            size = SizeDict(**get_size_dict(setting("size"), default_to_square=bool(setting("default_to_square"))))
            new_height, new_width = resized_image_size(height, width, size)
        scale_x, scale_y = new_width / width, new_height / height
        shift_x = shift_y = 0.0
        out_height, out_width = new_height, new_width
        if setting("do_center_crop"):
            crop = SizeDict(**get_size_dict(setting("crop_size"), param_name="crop_size"))
            backend = getattr(self, "backend", "pil")
            shift_x = crop_shift(new_width, crop.width, backend)
            shift_y = crop_shift(new_height, crop.height, backend)
            out_height, out_width = crop.height, crop.width
        return BoxGeometry(height, width, scale_x, scale_y, shift_x, shift_y, out_width, out_height)

    def inverse_geometry(self, height: int, width: int) -> BoxGeometry:
        """The geometry of an image of this size (only its size matters; a meta tensor stands in for it)."""
        return self.box_geometry(
            torch.empty(3, height, width, device="meta"), {"input_data_format": ChannelDimension.FIRST}
        )

    def normalize_boxes(
        self, boxes: list[torch.Tensor], geometries: list[BoxGeometry]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Per image (N_i, 4) xyxy boxes in its pixels -> (B, N, 4) float32 normalised xyxy in the frame of its
        `pixel_values`, clipped, zero-padded; (B, N) bool mask; per image the (N_i,) bool of boxes left empty."""
        batch, most = len(boxes), max((len(image_boxes) for image_boxes in boxes), default=0)
        out_boxes = torch.zeros(batch, most, 4, dtype=torch.float32)
        box_mask = torch.zeros(batch, most, dtype=torch.bool)
        empty = []
        for index, (image_boxes, geometry) in enumerate(zip(boxes, geometries)):
            normalized = geometry.to_normalized(image_boxes).clamp(0.0, 1.0)
            valid = (normalized[:, 2] > normalized[:, 0]) & (normalized[:, 3] > normalized[:, 1])
            count = len(image_boxes)
            out_boxes[index, :count] = torch.where(valid[:, None], normalized, torch.zeros_like(normalized)).float()
            box_mask[index, :count] = valid
            empty.append(~valid)
        return out_boxes, box_mask, empty

    # ------------------------------------------------------------------ crops

    def cut_crops(
        self,
        images: list[Any],
        boxes: list[torch.Tensor],
        box_mask: torch.Tensor,
        crop_scale: float = DEFAULT_CROP_SCALE,
        images_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`crop_pixel_values` (B, N, C, S, S) and `crop_mask` (B, N): each kept box's enlarged crop of the original image.

        Args:
            images: the B original images; boxes: per image (N_i, 4) xyxy in its pixels; box_mask: (B, N) the boxes
                to cut; crop_scale: enlargement about each box's centre; images_kwargs: a call's image options.
        The crops go through this image processor with its own settings (and the call's), except that they are resized
        straight to the model's input size (`crop_size`), as FineCLIP's crop transform does.
        """
        images_kwargs = dict(images_kwargs or {})

        def setting(name: str) -> Any:
            return images_kwargs[name] if images_kwargs.get(name) is not None else getattr(self, name, None)

        size = SizeDict(**get_size_dict(setting("crop_size"), param_name="crop_size"))
        layout = setting("input_data_format")
        pieces, rows, columns = [], [], []
        for image_index, (image, image_boxes) in enumerate(zip(images, boxes)):
            height, width = original_image_size(image, layout)
            for box_index, window in enumerate(crop_windows(image_boxes, crop_scale, height, width)):
                if box_mask[image_index, box_index]:
                    pieces.append(cut_window(image, window, layout))
                    rows.append(image_index)
                    columns.append(box_index)
        batch, most = box_mask.shape
        crop_mask = torch.zeros(batch, most, dtype=torch.bool)
        if not pieces:
            return {"crop_pixel_values": torch.zeros(batch, most, 3, size.height, size.width), "crop_mask": crop_mask}
        fixed = ("size", "do_resize", "do_center_crop", "input_data_format")
        options = {key: value for key, value in images_kwargs.items() if key not in fixed}
        # PIL pieces become channels-last arrays inside the image processor; the others are cut channels-last.
        processed = self(
            pieces,
            size={"height": size.height, "width": size.width},
            do_resize=True,
            do_center_crop=False,
            input_data_format=ChannelDimension.LAST,
            return_tensors="pt",
            **options,
        )["pixel_values"]
        crop_pixel_values = torch.zeros(batch, most, *processed.shape[1:], dtype=torch.float32)
        crop_pixel_values[rows, columns] = processed.float()
        crop_mask[rows, columns] = True
        return {"crop_pixel_values": crop_pixel_values, "crop_mask": crop_mask}

    # ------------------------------------------------------------------ post-processing

    def post_process_region_classification(
        self,
        probabilities: torch.Tensor,
        labels: Sequence[str],
        boxes: torch.Tensor,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor,
        box_mask: torch.Tensor | None = None,
        top_k: int | None = 5,
    ) -> list[list[dict[str, Any]]]:
        """Labelled boxes in the original images' pixels from per-box label probabilities.

        Args:
            probabilities: (B, N, L) probabilities of the L labels for each box (`pipeline_harmoclip.label_probabilities`
                of the region embeddings).
            labels: the L label names.
            boxes: (B, N, 4) normalised xyxy boxes as returned by this processor.
            target_sizes: per image its original (height, width), to put boxes back in its pixels.
            box_mask: (B, N) valid boxes (default all); masked boxes are left out of the results.
            top_k: labels kept per box (all if None).
        Returns:
            Per image a list with one dict per valid box, in box order: `{"box": {"xmin", "ymin", "xmax", "ymax"}` in
            the original image's pixels (the part the model saw: a box cut by a crop comes back clipped), `"label"`
            and `"score"`: the best label and its probability, `"labels"` and `"scores"`: the `top_k` best, best
            first}`.
        """
        labels = check_strings(labels, "labels")
        if probabilities.dim() != 3 or tuple(boxes.shape[:2]) != tuple(probabilities.shape[:2]) or boxes.shape[-1] != 4:
            raise ValueError(
                f"`probabilities` (B, N, L) and `boxes` (B, N, 4) must agree, got {tuple(probabilities.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        if probabilities.shape[-1] != len(labels):
            raise ValueError(
                f"`probabilities` holds {probabilities.shape[-1]} labels per box but `labels` has {len(labels)}"
            )
        if len(target_sizes) != probabilities.shape[0]:
            raise ValueError(
                f"`target_sizes` has {len(target_sizes)} entries but there are {probabilities.shape[0]} images"
            )
        top_k = check_top_k(top_k)
        if box_mask is None:
            box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool)
        keep = len(labels) if top_k is None else min(top_k, len(labels))
        scores, order = probabilities.detach().float().cpu().topk(keep, dim=-1)
        results = []
        for image_index, size in enumerate(target_sizes):
            height, width = (int(value) for value in size)
            geometry = self.inverse_geometry(height, width)
            pixel_boxes = geometry.to_original(boxes[image_index].detach().cpu().double())
            image_results = []
            for box_index in box_mask[image_index].cpu().bool().nonzero().flatten().tolist():
                # Rounded to 1/1000 pixel: the float32 round trip through `boxes` leaves noise below that.
                x1, y1, x2, y2 = (round(value, 3) for value in pixel_boxes[box_index].tolist())
                names = [labels[label] for label in order[image_index, box_index].tolist()]
                values = scores[image_index, box_index].tolist()
                image_results.append(
                    {
                        "box": {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2},
                        "label": names[0],
                        "score": values[0],
                        "labels": names,
                        "scores": values,
                    }
                )
            results.append(image_results)
        return results

    def post_process_grounding(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor,
        captions: Sequence[str],
        phrase_spans: Sequence[Sequence[tuple[int, int]]],
        box_mask: torch.Tensor | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Each phrase's box in the original image's pixels: the candidate whose region is most similar to the phrase.

        Args:
            logits: (B, P, N) `logit_scale * cos(phrase, region)` of every phrase with every candidate box.
            boxes: (B, N, 4) normalised xyxy candidates as the processor returns them (or proposed by the model).
            target_sizes: per image its original (height, width); captions: per image its caption;
            phrase_spans: per image the P (start, end) character spans of its phrases, in `logits`' order.
            box_mask: (B, N) valid candidates (default all).
        Returns:
            Per image a list, one dict per phrase: `{"phrase", "span": [start, end], "score": the chosen box's
            probability among the valid candidates (softmax of `logits`), "box": {"xmin", "ymin", "xmax", "ymax"},
            "box_index": its index among the N}`.
        """
        if logits.dim() != 3 or boxes.dim() != 3 or logits.shape[-1] != boxes.shape[1] or boxes.shape[-1] != 4:
            raise ValueError(
                f"`logits` (B, P, N) and `boxes` (B, N, 4) must agree, got {tuple(logits.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        batch = logits.shape[0]
        if not len(target_sizes) == len(captions) == len(phrase_spans) == batch:
            raise ValueError(
                f"`target_sizes`, `captions` and `phrase_spans` need one entry per image ({batch}), got "
                f"{len(target_sizes)}, {len(captions)} and {len(phrase_spans)}"
            )
        valid = torch.ones(boxes.shape[:2], dtype=torch.bool) if box_mask is None else box_mask.cpu().bool()
        results = []
        for index in range(batch):
            spans = phrase_spans[index]
            if len(spans) != logits.shape[1]:
                raise ValueError(f"`phrase_spans`[{index}] holds {len(spans)} spans for {logits.shape[1]} phrases")
            if not valid[index].any():
                raise ValueError(f"`box_mask`[{index}]: the image has no box candidates for its phrases")
            masked = logits[index].detach().float().cpu().masked_fill(~valid[index][None], float("-inf"))
            probabilities = masked.softmax(dim=-1)  # (P, N)
            scores, best = probabilities.max(dim=-1)
            height, width = (int(value) for value in target_sizes[index])
            pixel_boxes = self.inverse_geometry(height, width).to_original(boxes[index].detach().cpu().double())
            image_results = []
            for (start, end), score, box_index in zip(spans, scores.tolist(), best.tolist()):
                x1, y1, x2, y2 = (round(value, 3) for value in pixel_boxes[box_index].tolist())
                image_results.append(
                    {
                        "phrase": captions[index][start:end],
                        "span": [int(start), int(end)],
                        "score": score,
                        "box": {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2},
                        "box_index": box_index,
                    }
                )
            results.append(image_results)
        return results

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.1,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        nms_threshold: float | None = NMS_IOU,
        top_k: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections in the original images' pixels from `HarmoCLIPModel.detect`'s output (OWLv2's signature).

        Args:
            outputs: a `HarmoCLIPDetectionOutput` (`scores` (B, N, L), `pred_boxes` (B, N, 4) normalised xyxy in the
                frame of `pixel_values`, `box_mask` (B, N)).
            threshold: the least score kept, in [0, 1].
            target_sizes: per image its original (height, width); None leaves boxes normalised to the model's frame.
                Boxes go back through this image processor's resize and crop (`BoxGeometry.to_original`), so non-square
                images come back right; a call made with other `size` settings than the processor's own must keep the
                image's whole frame (a crop-free resize, as the region preset does).
            nms_threshold: class-wise NMS IoU (None: none); top_k: detections kept per image (all if None).
        Returns:
            Per image `{"scores": (K,), "labels": (K,) int64 indices of the candidate labels, "boxes": (K, 4) xyxy}`,
            best first.
        """
        scores, boxes, box_mask = outputs["scores"], outputs["pred_boxes"], outputs.get("box_mask")
        sizes = check_target_sizes(target_sizes, len(scores)) if target_sizes is not None else None
        results = []
        for index in range(len(scores)):
            found = select_detections(
                scores[index],
                boxes[index],
                box_mask[index] if box_mask is not None else None,
                threshold,
                nms_threshold,
                top_k,
            )
            if sizes is not None:
                found["boxes"] = self.inverse_geometry(*sizes[index]).to_original(found["boxes"].double()).float()
            results.append(found)
        return results

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.0,
        return_probabilities: bool = False,
    ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """Label maps at the original images' size from `HarmoCLIPModel.detect`'s `dense_probabilities`.

        Each image's patch probabilities are read bilinearly at every target pixel's centre through this processor's
        resize and crop (`BoxGeometry`), then each pixel gets its best label's index, or -1 (background) where the
        background's probability beats it, where it is below `threshold`, or where the pixel was cut off by a crop.

        Args:
            outputs: a `HarmoCLIPDetectionOutput`; target_sizes: per image its (height, width); None: the patch grid.
            threshold: the least label probability a pixel needs, in [0, 1].
            return_probabilities: also return each image's (L, H, W) upsampled label probabilities.
        Returns:
            Per image an (H, W) int64 label map (or `(label_map, probabilities)`).
        """
        probabilities = outputs["dense_probabilities"]
        background = outputs.get("background_probabilities")
        batch, _, grid_height, grid_width = probabilities.shape
        sizes = check_target_sizes(target_sizes, batch) if target_sizes is not None else None
        results = []
        for index in range(batch):
            if sizes is None:  # the patch grid itself: pixel centres of the frame
                frame_x = (torch.arange(grid_width) + 0.5) / grid_width
                frame_y = (torch.arange(grid_height) + 0.5) / grid_height
            else:
                height, width = sizes[index]
                geometry = self.inverse_geometry(height, width)
                frame_x = ((torch.arange(width) + 0.5) * geometry.scale_x + geometry.shift_x) / geometry.width
                frame_y = ((torch.arange(height) + 0.5) * geometry.scale_y + geometry.shift_y) / geometry.height
            label_map, upsampled = semantic_label_map(
                probabilities[index],
                background[index] if background is not None else None,
                frame_x.double(),
                frame_y.double(),
                threshold,
            )
            results.append((label_map, upsampled) if return_probabilities else label_map)
        return results


def _settings(image_processor: Any) -> dict[str, Any]:
    """An image processor's settings, without what names its class."""
    names = ("image_processor_type", "auto_map", "processor_class", "_processor_class")
    return {key: value for key, value in image_processor.to_dict().items() if key not in names}


def clip_image_processor(image_size: int = 224, **settings: Any) -> HarmoCLIPImageProcessor:
    """CLIP's image processor settings (shortest-edge resize to `image_size`, centre crop `image_size` x `image_size`)
    as a `HarmoCLIPImageProcessor` (torchvision-backed where torchvision is installed, PIL-backed otherwise)."""
    values = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    values.update(settings)
    return HarmoCLIPImageProcessor(**values)


HarmoCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
# In a process that imported this file, `AutoImageProcessor` finds the class for a HarmoCLIP folder without remote code.
AutoImageProcessor.register(HarmoCLIPConfig, slow_image_processor_class=HarmoCLIPImageProcessor, exist_ok=True)

__all__ = [
    "HarmoCLIPImageProcessor",
    "BoxGeometry",
    "DEFAULT_CROP_SCALE",
    "clip_image_processor",
    "check_crop_options",
    "crop_windows",
    "cut_window",
    "original_image_size",
    "resized_image_size",
]
