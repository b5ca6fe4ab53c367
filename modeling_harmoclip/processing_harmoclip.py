"""HarmoCLIP's processor: images, captions, boxes and phrase spans in; aligned model inputs out.

`HarmoCLIPProcessor` is the joint of CLIP's fast tokenizer and `HarmoCLIPImageProcessor` (CLIP's image processor with
the box geometry, the crops and the post-processing). Besides `pixel_values`, `input_ids` and `attention_mask` it
places boxes given in the original image's pixels in the frame of `pixel_values` (through the image processor's
geometry) and turns character spans of caption phrases into token masks through the tokenizer's offset mapping. Its
`post_process_*` methods forward to the image processor's, as OWLv2's processor does; it never runs the model. Region
classification in one call is the `region-classification` pipeline (`pipeline_harmoclip.py`)::

    from transformers import pipeline

    classifier = pipeline("region-classification", model="org/harmoclip-vitb16", trust_remote_code=True)
    classifier("street.jpg", boxes=[[10, 20, 200, 310], [220, 40, 400, 300]], candidate_labels=["dog", "bicycle"])

Training inputs (one caption per image, each box linked to a phrase of its caption or to none)::

    inputs = processor(
        images=[image],
        text=["A dog chases a red bicycle."],
        boxes=[[[10, 20, 200, 310], [220, 40, 400, 300]]],
        phrase_spans=[[(0, 5), (13, 26)]],  # "A dog", "a red bicycle"
    )
    outputs = model(**inputs, return_loss=True)

For region tasks use the region preset, `HarmoCLIPProcessor(..., region_mode=True)` or
`AutoProcessor.from_pretrained(..., trust_remote_code=True, region_mode=True)`: images are resized to a square without
cropping, so no box is cut off.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from typing import Any

import torch
import transformers
from transformers import BatchFeature
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import SizeDict, is_pil_image, is_valid_image
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

# The configuration file is imported for its check of the transformers version, and so that the loaders of transformers
# 4.57 and 5.0, which copy a local folder's entry file with its own relative imports only, copy it beside this one
# (the image processor imports it too).
from .configuration_harmoclip import check_transformers_version  # noqa: F401
from .image_processing_harmoclip import (
    DEFAULT_CROP_SCALE,
    BoxGeometry,
    HarmoCLIPImageProcessor,
    check_crop_options,
    clip_image_processor,
    read_image,
    xywh_to_xyxy,
)

# CLIP's text context: 77 positions, including the start and end tokens.
CLIP_CONTEXT_LENGTH = 77
# Tokenizers loaded without a limit report a huge `model_max_length`; anything above this counts as "unset".
_UNSET_MAX_LENGTH = 10**6
BOX_FORMATS = ("xyxy", "xywh")


def phrase_id(phrase: str) -> int:
    """Stable non-negative int64 id of a phrase's text: the same in every process and Python run.

    The text is lower-cased and its whitespace folded first, so "A  Dog" and "a dog" share an id.
    """
    normalized = " ".join(phrase.lower().split())
    digest = hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class HarmoCLIPProcessorKwargs(ProcessingKwargs, total=False):
    """The processor's call defaults: captions are truncated to CLIP's context and padded to the longest in the batch
    unless the call says otherwise. Passed to `_merge_kwargs` explicitly, which every transformers 5.x release reads."""

    _defaults = {"text_kwargs": {"padding": True, "truncation": True}}


class HarmoCLIPProcessor(ProcessorMixin):
    r"""
    CLIP's image processor and fast tokenizer, plus boxes and phrase spans.

    Args:
        image_processor: `HarmoCLIPImageProcessor` (`clip_image_processor`); a plain `CLIPImageProcessor` (or its
            PIL-backed twin), as older saved folders carry, is turned into one with the same settings.
        tokenizer: CLIP's fast tokenizer (`CLIPTokenizer`). Without a length limit of its own it gets CLIP's 77.
        region_mode (`bool`, defaults to `False`): if True, the image processor resizes every image straight to its
            crop size (a square for CLIP) without cropping, so boxes are never cut off; saved with the processor.
            If False, the image processor's own settings (CLIP: shortest-edge resize, centre crop) are kept.

    Calling the processor returns a `BatchFeature` with:
        - `pixel_values` (B, 3, H, W) when `images` are given;
        - `input_ids`, `attention_mask` (B_txt, T) when `text` is given (padded to the longest, truncated to the
          tokenizer's `model_max_length` by default);
        - with `boxes`: `boxes` (B, N, 4) float32 normalised xyxy in the frame of `pixel_values`, `box_mask` (B, N)
          bool (False for padding and for boxes left empty by the crop), N the most boxes of any image;
        - with `phrase_spans`: `phrase_token_mask` (B, N, T) bool, the caption tokens of each box's phrase, and
          `phrase_ids` (B, N) int64, `phrase_id` of the phrase text or -1 for a box without (usable) phrase;
        - with `return_crops=True`: `crop_pixel_values` (B, N, 3, S, S) float32, each kept box enlarged by
          `crop_scale` about its centre, clipped to the image, cut from the *original* image (whole pixels, rounded as
          PIL's `Image.crop` rounds them) and resized to the model's input size S (the image processor's `crop_size`)
          with the image processor's resampling and normalisation; `crop_mask` (B, N) bool, True where a crop was cut
          (the kept boxes: equal to `box_mask`), zeros elsewhere.
    """

    if int(transformers.__version__.split(".")[0]) < 5:
        # What transformers 4.x reads to load the parts; 5.x reads `__init__`'s parameters (and warns about these).
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, region_mode: bool = False, **kwargs: Any):
        # A plain CLIP image processor (older saved folders carry one) becomes a HarmoCLIP one with its settings.
        image_processor = HarmoCLIPImageProcessor.from_clip(
            image_processor if image_processor is not None else clip_image_processor()
        )
        if tokenizer is None:
            raise ValueError("HarmoCLIPProcessor needs a `tokenizer` (CLIP's fast tokenizer)")
        if not isinstance(region_mode, bool):
            raise TypeError(f"`region_mode` must be a bool, got {type(region_mode).__name__}: {region_mode!r}")
        if region_mode:
            # A copy, so that an image processor shared with other code keeps its own geometry.
            image_processor = copy.deepcopy(image_processor)
            crop = SizeDict(**get_size_dict(image_processor.crop_size, param_name="crop_size"))
            image_processor.size = {"height": crop.height, "width": crop.width}  # a dict: every release takes it
            image_processor.do_center_crop = False
        if getattr(tokenizer, "model_max_length", None) is None or tokenizer.model_max_length > _UNSET_MAX_LENGTH:
            tokenizer.model_max_length = CLIP_CONTEXT_LENGTH
        self.region_mode = region_mode
        super().__init__(image_processor, tokenizer, **kwargs)

    def as_region_mode(self) -> HarmoCLIPProcessor:
        """This processor if it already resizes to a square without cropping, else such a copy (same tokenizer and
        image settings): what box tasks want, so that no box is cut by a crop."""
        if self.region_mode:
            return self
        return type(self)(image_processor=self.image_processor, tokenizer=self.tokenizer, region_mode=True)

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["boxes", "box_mask", "phrase_token_mask", "phrase_ids"]

    # ------------------------------------------------------------------ __call__

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        boxes: Any = None,
        phrase_spans: Any = None,
        box_format: str = "xyxy",
        return_tensors: str | None = "pt",
        return_crops: bool = False,
        crop_scale: float = DEFAULT_CROP_SCALE,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepares model inputs.

        Args:
            images: one image (PIL image, array or tensor) or a list of B images.
            text: one string or a list of strings. With `phrase_spans`: one caption per image.
            boxes: per image a list of boxes in the original image's pixels, `[x1, y1, x2, y2]` (or COCO
                `[x, y, w, h]` with `box_format="xywh"`); for a single (unlisted) image, just its list of boxes.
            phrase_spans: per image a list aligned with its boxes: `(start, end)` character offsets into that
                image's caption, or `None` for a box without phrase.
            box_format: `"xyxy"` or `"xywh"`.
            return_tensors: `"pt"` (default), `"np"` or None.
            return_crops: also return `crop_pixel_values` and `crop_mask`, every box's crop of the original image (the
                GR teacher's input and the crop-and-encode baseline's). Needs `boxes`.
            crop_scale: enlargement of each box about its centre before its crop is cut (a positive number;
                1.5 as CLIPSelf and FineCLIP, 1.0 for the box itself).
            **kwargs: tokenizer and image processor options (e.g. `padding="max_length"`, `max_length`).
        Returns:
            `BatchFeature`, see the class docstring.
        """
        if images is None and text is None:
            raise ValueError("HarmoCLIPProcessor needs `images`, `text` or both")
        if box_format not in BOX_FORMATS:
            raise ValueError(f"`box_format` must be one of {BOX_FORMATS}, got {box_format!r}")
        check_crop_options(return_crops, crop_scale)
        if return_crops and boxes is None:
            raise ValueError("`return_crops=True` needs `boxes`: a crop is cut for every box")
        images, text, boxes, phrase_spans = self._batch_inputs(images, text, boxes, phrase_spans)
        merged = self._merge_kwargs(
            HarmoCLIPProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        for options in (text_kwargs, images_kwargs):
            options.pop("return_tensors", None)

        box_tensor = None
        if boxes is not None:
            box_tensor = self._check_boxes(boxes, box_format, len(images))
        spans = self._check_spans(phrase_spans, text, boxes) if phrase_spans is not None else None

        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors="pt", **images_kwargs))
        offsets = None
        if text is not None:
            encoding = self.tokenizer(text, return_offsets_mapping=spans is not None, **text_kwargs)
            offsets = encoding.pop("offset_mapping", None)
            data.update(encoding)
        if box_tensor is not None:
            geometries = [self.box_geometry(image, images_kwargs) for image in images]
            data.update(self._format_boxes(box_tensor, geometries, spans, offsets, text))
            if return_crops:
                data.update(
                    self.image_processor.cut_crops(images, box_tensor, data["box_mask"], crop_scale, images_kwargs)
                )
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _batch_inputs(self, images: Any, text: Any, boxes: Any, phrase_spans: Any) -> tuple[Any, Any, Any, Any]:
        """Wraps a single image (and its boxes, spans, caption) into a batch of one; checks the outer types."""
        if images is not None:
            if is_valid_image(images):
                images = [images]
                boxes = [boxes] if boxes is not None else None
                phrase_spans = [phrase_spans] if phrase_spans is not None else None
            elif isinstance(images, (list, tuple)):
                for index, image in enumerate(images):
                    if not is_valid_image(image):
                        raise TypeError(
                            f"`images`[{index}] must be a PIL image, numpy array or torch tensor, got {type(image).__name__}"
                        )
                images = list(images)
            else:
                raise TypeError(f"`images` must be an image or a list of images, got {type(images).__name__}")
            # PIL images in the displayed frame (EXIF orientation applied), as every entry point reads them: boxes,
            # crops and sizes below are in that frame.
            images = [read_image(image) if is_pil_image(image) else image for image in images]
        if text is not None:
            if isinstance(text, str):
                text = [text]
            elif isinstance(text, (list, tuple)):
                for index, caption in enumerate(text):
                    if not isinstance(caption, str):
                        raise TypeError(f"`text`[{index}] must be a string, got {type(caption).__name__}: {caption!r}")
                text = list(text)
            else:
                raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}")
        if boxes is not None and images is None:
            raise ValueError("`boxes` were given without `images`: boxes are placed in their image's frame")
        if phrase_spans is not None:
            if text is None:
                raise ValueError("`phrase_spans` were given without `text`: spans point into each image's caption")
            if boxes is None:
                raise ValueError("`phrase_spans` were given without `boxes`: each span belongs to a box")
        return images, text, boxes, phrase_spans

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _check_boxes(boxes: Any, box_format: str, num_images: int) -> list[torch.Tensor]:
        """Per image an (N_i, 4) float64 xyxy tensor in original pixels; raises on malformed input."""
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(f"`boxes` must be a list with one list of boxes per image, got {type(boxes).__name__}")
        if len(boxes) != num_images:
            raise ValueError(f"`boxes` has {len(boxes)} entries but there are {num_images} images")
        checked = []
        for image_index, image_boxes in enumerate(boxes):
            if isinstance(image_boxes, torch.Tensor) or hasattr(image_boxes, "__array__"):
                image_boxes = torch.as_tensor(image_boxes).tolist()
            if not isinstance(image_boxes, (list, tuple)):
                raise TypeError(
                    f"`boxes`[{image_index}] must be a list of boxes, got {type(image_boxes).__name__}: {image_boxes!r}"
                )
            rows = []
            for box_index, box in enumerate(image_boxes):
                where = f"`boxes`[{image_index}][{box_index}]"
                if not isinstance(box, (list, tuple)) or not all(
                    isinstance(value, (int, float)) and not isinstance(value, bool) for value in box
                ):
                    raise TypeError(f"{where} must be a list of 4 numbers, got {box!r}")
                if len(box) != 4:
                    raise ValueError(f"{where} must have 4 values ({box_format}), got {len(box)}: {list(box)}")
                if not all(math.isfinite(value) for value in box):
                    raise ValueError(f"{where} is not finite: {list(box)}")
                xyxy = xywh_to_xyxy(box) if box_format == "xywh" else [float(value) for value in box]
                if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
                    raise ValueError(f"{where} has negative width or height ({box_format}): {list(box)}")
                rows.append(xyxy)
            checked.append(torch.tensor(rows, dtype=torch.float64).reshape(-1, 4))
        return checked

    @staticmethod
    def _check_spans(phrase_spans: Any, text: list[str], boxes: list[Any]) -> list[list[tuple[int, int] | None]]:
        """Per image, per box `(start, end)` or None; raises on malformed input."""
        if not isinstance(phrase_spans, (list, tuple)):
            raise TypeError(
                f"`phrase_spans` must be a list with one list of spans per image, got {type(phrase_spans).__name__}"
            )
        if len(phrase_spans) != len(boxes):
            raise ValueError(f"`phrase_spans` has {len(phrase_spans)} entries but there are {len(boxes)} images")
        if len(text) != len(boxes):
            raise ValueError(
                f"`text` has {len(text)} captions but there are {len(boxes)} images (one caption per image)"
            )
        checked = []
        for image_index, (image_spans, caption, image_boxes) in enumerate(zip(phrase_spans, text, boxes)):
            if not isinstance(image_spans, (list, tuple)):
                raise TypeError(
                    f"`phrase_spans`[{image_index}] must be a list of spans, got {type(image_spans).__name__}"
                )
            if len(image_spans) != len(image_boxes):
                raise ValueError(
                    f"`phrase_spans`[{image_index}] has {len(image_spans)} spans but image {image_index} has "
                    f"{len(image_boxes)} boxes (one span or None per box)"
                )
            rows: list[tuple[int, int] | None] = []
            for box_index, span in enumerate(image_spans):
                where = f"`phrase_spans`[{image_index}][{box_index}]"
                if span is None:
                    rows.append(None)
                    continue
                if (
                    not isinstance(span, (list, tuple))
                    or len(span) != 2
                    or not all(isinstance(value, int) and not isinstance(value, bool) for value in span)
                ):
                    raise TypeError(f"{where} must be None or a (start, end) pair of ints, got {span!r}")
                start, end = span
                if not 0 <= start < end <= len(caption):
                    raise ValueError(
                        f"{where} = {tuple(span)} must satisfy 0 <= start < end <= {len(caption)} (the length of "
                        f"caption {image_index})"
                    )
                if not caption[start:end].strip():
                    raise ValueError(f"{where} = {tuple(span)} covers only whitespace: {caption[start:end]!r}")
                rows.append((start, end))
            checked.append(rows)
        return checked

    # ------------------------------------------------------------------ geometry (the image processor's)

    def box_geometry(self, image: Any, images_kwargs: dict[str, Any] | None = None) -> BoxGeometry:
        """The image processor's `box_geometry`: the map from `image`'s pixels to the frame of its `pixel_values`."""
        return self.image_processor.box_geometry(image, images_kwargs)

    def _format_boxes(
        self,
        boxes: list[torch.Tensor],
        geometries: list[BoxGeometry],
        spans: list[list[tuple[int, int] | None]] | None,
        offsets: list[list[tuple[int, int]]] | None,
        text: list[str] | None,
    ) -> dict[str, torch.Tensor]:
        """Normalised, clipped, padded boxes with their masks; phrase token masks and ids when spans are given."""
        out_boxes, box_mask, empty = self.image_processor.normalize_boxes(boxes, geometries)
        for index, (image_boxes, image_empty) in enumerate(zip(boxes, empty)):
            for box_index in image_empty.nonzero().flatten().tolist():
                warnings.warn(
                    f"`boxes`[{index}][{box_index}] = {image_boxes[box_index].tolist()} (xyxy) is empty in the processed "
                    "image (zero size or cut off by the crop); it is masked out",
                    stacklevel=3,
                )
        result = {"boxes": out_boxes, "box_mask": box_mask}
        if spans is not None:
            token_mask, ids = self._phrase_tokens(spans, offsets, text, box_mask, out_boxes.shape[1])
            result.update(phrase_token_mask=token_mask, phrase_ids=ids)
        return result

    def phrase_token_mask(
        self, text: str | list[str], phrase_spans: Any, truncated: str = "warn", **kwargs: Any
    ) -> BatchFeature:
        """Captions and, for each, the caption tokens of its phrases: what the model's phrase embeddings read
        (`get_lexeme_features`, `get_phrase_features`) and what `__call__` gives with boxes, here without boxes.

        Args:
            text: one caption or a list of B captions.
            phrase_spans: per caption a list of `(start, end)` character offsets into it (for one caption, just its
                list).
            truncated: what a span cut off by the caption's truncation gets: "warn" (its row stays empty, with a
                warning, as in `__call__`) or "raise" (a `ValueError` naming the span).
            **kwargs: tokenizer options (e.g. `max_length`).
        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (B, T), `phrase_token_mask` (B, P, T) bool (P the most
            spans of any caption; rows past a caption's spans are empty) and `phrase_ids` (B, P) int64 (-1: none).
        """
        if truncated not in ("warn", "raise"):
            raise ValueError(f"`truncated` must be 'warn' or 'raise', got {truncated!r}")
        if isinstance(text, str):
            text, phrase_spans = [text], [phrase_spans]
        _, text, _, _ = self._batch_inputs(None, text, None, None)
        if not isinstance(phrase_spans, (list, tuple)) or len(phrase_spans) != len(text):
            count = f"{len(phrase_spans)} entries" if isinstance(phrase_spans, (list, tuple)) else repr(phrase_spans)
            raise ValueError(f"`phrase_spans` must hold one list of spans per caption ({len(text)}), got {count}")
        spans = self._check_spans(phrase_spans, text, phrase_spans)
        return_tensors = kwargs.pop("return_tensors", "pt")
        text_kwargs = self._merge_kwargs(
            HarmoCLIPProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )["text_kwargs"]
        text_kwargs.pop("return_tensors", None)
        encoding = self.tokenizer(text, return_offsets_mapping=True, **text_kwargs)
        offsets = encoding.pop("offset_mapping")
        most = max((len(caption_spans) for caption_spans in spans), default=0)
        listed = torch.zeros(len(spans), most, dtype=torch.bool)
        for index, caption_spans in enumerate(spans):
            listed[index, : len(caption_spans)] = True
        token_mask, ids = self._phrase_tokens(spans, offsets, text, listed, most, truncated)
        return BatchFeature(
            data={**encoding, "phrase_token_mask": token_mask, "phrase_ids": ids}, tensor_type=return_tensors
        )

    def _phrase_tokens(
        self,
        spans: list[list[tuple[int, int] | None]],
        offsets: list[list[tuple[int, int]]],
        text: list[str],
        box_mask: torch.Tensor,
        most: int,
        truncated: str = "warn",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, T) token masks from character spans via offsets, and (B, N) phrase ids (-1: none); a span cut off by
        truncation is left empty with a warning, or raises (`truncated="raise"`)."""
        length = len(offsets[0]) if offsets else 0
        token_mask = torch.zeros(len(spans), most, length, dtype=torch.bool)
        ids = torch.full((len(spans), most), -1, dtype=torch.int64)
        for image_index, (image_spans, image_offsets, caption) in enumerate(zip(spans, offsets, text)):
            # Special and padding tokens have empty offsets; the rest cover the caption up to `covered`.
            token_offsets = [(token, start, end) for token, (start, end) in enumerate(image_offsets) if end > start]
            covered = max((end for _, _, end in token_offsets), default=0)
            for box_index, span in enumerate(image_spans):
                if span is None or not box_mask[image_index, box_index]:
                    continue
                start, end = span
                if caption[max(start, covered) : end].strip():
                    message = (
                        f"`phrase_spans`[{image_index}][{box_index}] = {span} ({caption[start:end]!r}) is cut off by "
                        f"truncation of caption {image_index} to {length} tokens"
                    )
                    if truncated == "raise":
                        raise ValueError(message)
                    warnings.warn(message + "; the box keeps no phrase", stacklevel=4)
                    continue
                tokens = [
                    token for token, token_start, token_end in token_offsets if token_start < end and token_end > start
                ]
                if not tokens:
                    raise ValueError(
                        f"`phrase_spans`[{image_index}][{box_index}] = {span} ({caption[start:end]!r}) matches no token"
                    )
                token_mask[image_index, box_index, tokens] = True
                ids[image_index, box_index] = phrase_id(caption[start:end])
        return token_mask, ids

    # ------------------------------------------------------------------ post-processing (the image processor's)

    def post_process_region_classification(self, *args: Any, **kwargs: Any) -> list[list[dict[str, Any]]]:
        """Forwards to `HarmoCLIPImageProcessor.post_process_region_classification`."""
        return self.image_processor.post_process_region_classification(*args, **kwargs)

    def post_process_object_detection(self, *args: Any, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        """Forwards to `HarmoCLIPImageProcessor.post_process_object_detection` (OWLv2's signature)."""
        return self.image_processor.post_process_object_detection(*args, **kwargs)

    def post_process_semantic_segmentation(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Forwards to `HarmoCLIPImageProcessor.post_process_semantic_segmentation`."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)

    def post_process_grounding(self, *args: Any, **kwargs: Any) -> list[list[dict[str, Any]]]:
        """Forwards to `HarmoCLIPImageProcessor.post_process_grounding`."""
        return self.image_processor.post_process_grounding(*args, **kwargs)


HarmoCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "HarmoCLIPProcessor",
    "phrase_id",
    "CLIP_CONTEXT_LENGTH",
    "BOX_FORMATS",
]
