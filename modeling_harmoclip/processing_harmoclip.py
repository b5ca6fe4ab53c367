"""HarmoCLIP's processor: images, captions, boxes and phrase spans in; aligned model inputs out.

`HarmoCLIPProcessor` wraps CLIP's image processor and CLIP's fast tokenizer. Besides `pixel_values`, `input_ids` and
`attention_mask` it turns boxes given in the original image's pixels into normalised xyxy boxes in the frame of
`pixel_values` (following the image processor's actual resize and crop), and character spans of caption phrases into
token masks through the tokenizer's offset mapping. It also turns per-box label probabilities back into labelled boxes
in the original image's pixels (`post_process_region_classification`); it never runs the model. Region
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature
from transformers.image_processing_utils import get_size_dict
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    ChannelDimension,
    SizeDict,
    get_image_size,
    get_image_size_for_max_height_width,
    infer_channel_dimension_format,
    is_pil_image,
    is_valid_image,
)
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import is_torchvision_available

from .box_ops import NMS_IOU, enlarge_boxes, xywh_to_xyxy
from .detection import check_target_sizes, select_detections, semantic_label_map
from .image_io import read_image
from .zero_shot import check_strings, check_top_k

# CLIP's text context: 77 positions, including the start and end tokens.
CLIP_CONTEXT_LENGTH = 77
# Tokenizers loaded without a limit report a huge `model_max_length`; anything above this counts as "unset".
_UNSET_MAX_LENGTH = 10**6
BOX_FORMATS = ("xyxy", "xywh")
# Enlargement of a box about its centre before its crop is cut, as CLIPSelf and FineCLIP cut their teacher crops.
DEFAULT_CROP_SCALE = 1.5


def clip_image_processor(image_size: int = 224, **settings: Any):
    """CLIP's image processor (shortest-edge resize to `image_size`, centre crop `image_size` x `image_size`).

    The torchvision-backed `CLIPImageProcessor` where torchvision is installed, otherwise its PIL-backed twin
    `CLIPImageProcessorPil`; both save as `CLIPImageProcessor` and `AutoImageProcessor` picks whichever backend exists.
    """
    if is_torchvision_available():
        from transformers import CLIPImageProcessor as image_processor_class
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as image_processor_class
    values = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    values.update(settings)
    return image_processor_class(**values)


def phrase_id(phrase: str) -> int:
    """Stable non-negative int64 id of a phrase's text: the same in every process and Python run.

    The text is lower-cased and its whitespace folded first, so "A  Dog" and "a dog" share an id.
    """
    normalized = " ".join(phrase.lower().split())
    digest = hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


@dataclass(frozen=True)
class BoxGeometry:
    """How original pixel coordinates map into the frame of `pixel_values` for one image.

    A point (x, y) of the original image lands at ((x * scale_x + shift_x) / width, (y * scale_y + shift_y) / height)
    in normalised `pixel_values` coordinates (width, height: the output frame in pixels).
    """

    original_height: int
    original_width: int
    scale_x: float
    scale_y: float
    shift_x: float
    shift_y: float
    width: int
    height: int

    def to_normalized(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy in original pixels -> (N, 4) xyxy normalised to the output frame (not clipped)."""
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        shift = boxes.new_tensor([self.shift_x, self.shift_y, self.shift_x, self.shift_y])
        size = boxes.new_tensor([self.width, self.height, self.width, self.height])
        return (boxes * scale + shift) / size

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) normalised xyxy in the output frame -> (N, 4) xyxy in original pixels, clipped to the image."""
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        shift = boxes.new_tensor([self.shift_x, self.shift_y, self.shift_x, self.shift_y])
        size = boxes.new_tensor([self.width, self.height, self.width, self.height])
        original = (boxes * size - shift) / scale
        limits = boxes.new_tensor(
            [self.original_width, self.original_height, self.original_width, self.original_height]
        )
        return torch.minimum(original.clamp(min=0), limits)


def _crop_shift(size: int, crop: int, backend: str) -> float:
    """Offset added to a coordinate by centre-cropping `size` pixels to `crop` (zero-padding when crop > size).

    Mirrors the image processors: both crop at floor((size - crop) / 2); when padding, torchvision puts
    floor((crop - size) / 2) pixels before the image and the PIL/NumPy backend ceil((crop - size) / 2).
    """
    if crop <= size:
        return -float((size - crop) // 2)
    padding = crop - size
    return float(padding // 2 if backend == "torchvision" else (padding + 1) // 2)


class HarmoCLIPProcessorKwargs(ProcessingKwargs, total=False):
    """The processor's call defaults: captions are truncated to CLIP's context and padded to the longest in the batch
    unless the call says otherwise. Passed to `_merge_kwargs` explicitly, which every transformers 5.x release reads."""

    _defaults = {"text_kwargs": {"padding": True, "truncation": True}}


class HarmoCLIPProcessor(ProcessorMixin):
    r"""
    CLIP's image processor and fast tokenizer, plus boxes and phrase spans.

    Args:
        image_processor: `CLIPImageProcessor` (or its PIL-backed twin `CLIPImageProcessorPil`); see
            `clip_image_processor`.
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

    def __init__(self, image_processor=None, tokenizer=None, region_mode: bool = False, **kwargs: Any):
        if image_processor is None:
            image_processor = clip_image_processor()
        if tokenizer is None:
            raise ValueError("HarmoCLIPProcessor needs a `tokenizer` (CLIP's fast tokenizer)")
        if not isinstance(region_mode, bool):
            raise TypeError(f"`region_mode` must be a bool, got {type(region_mode).__name__}: {region_mode!r}")
        if region_mode:
            # A copy, so that an image processor shared with other code keeps its own geometry.
            image_processor = copy.deepcopy(image_processor)
            crop = SizeDict(**get_size_dict(image_processor.crop_size, param_name="crop_size"))
            image_processor.size = SizeDict(height=crop.height, width=crop.width)
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
            data.update(self._format_boxes(box_tensor, geometries, spans, offsets, data.get("input_ids"), text))
            if return_crops:
                data.update(
                    self._cut_crops(images, box_tensor, geometries, data["box_mask"], crop_scale, images_kwargs)
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

    # ------------------------------------------------------------------ geometry

    def box_geometry(self, image: Any, images_kwargs: dict[str, Any] | None = None) -> BoxGeometry:
        """The map from `image`'s pixels to the frame of its `pixel_values`, from the image processor's settings
        (overridden by `images_kwargs`, as in a call)."""
        options = dict(images_kwargs or {})

        def setting(name: str) -> Any:
            return options[name] if options.get(name) is not None else getattr(self.image_processor, name, None)

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
            backend = getattr(self.image_processor, "backend", "pil")
            shift_x = _crop_shift(new_width, crop.width, backend)
            shift_y = _crop_shift(new_height, crop.height, backend)
            out_height, out_width = crop.height, crop.width
        return BoxGeometry(height, width, scale_x, scale_y, shift_x, shift_y, out_width, out_height)

    def _format_boxes(
        self,
        boxes: list[torch.Tensor],
        geometries: list[BoxGeometry],
        spans: list[list[tuple[int, int] | None]] | None,
        offsets: list[list[tuple[int, int]]] | None,
        input_ids: Any,
        text: list[str] | None,
    ) -> dict[str, torch.Tensor]:
        """Normalised, clipped, padded boxes with their masks; phrase token masks and ids when spans are given."""
        batch, most = len(boxes), max((len(image_boxes) for image_boxes in boxes), default=0)
        out_boxes = torch.zeros(batch, most, 4, dtype=torch.float32)
        box_mask = torch.zeros(batch, most, dtype=torch.bool)
        for index, (image_boxes, geometry) in enumerate(zip(boxes, geometries)):
            normalized = geometry.to_normalized(image_boxes).clamp(0.0, 1.0)
            valid = (normalized[:, 2] > normalized[:, 0]) & (normalized[:, 3] > normalized[:, 1])
            for box_index in (~valid).nonzero().flatten().tolist():
                warnings.warn(
                    f"`boxes`[{index}][{box_index}] = {image_boxes[box_index].tolist()} (xyxy) is empty in the processed "
                    "image (zero size or cut off by the crop); it is masked out",
                    stacklevel=3,
                )
            count = len(image_boxes)
            out_boxes[index, :count] = torch.where(valid[:, None], normalized, torch.zeros_like(normalized)).float()
            box_mask[index, :count] = valid
        result = {"boxes": out_boxes, "box_mask": box_mask}
        if spans is not None:
            token_mask, ids = self._phrase_tokens(spans, offsets, text, box_mask, most)
            result.update(phrase_token_mask=token_mask, phrase_ids=ids)
        return result

    def _cut_crops(
        self,
        images: list[Any],
        boxes: list[torch.Tensor],
        geometries: list[BoxGeometry],
        box_mask: torch.Tensor,
        crop_scale: float,
        images_kwargs: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        """`crop_pixel_values` (B, N, C, S, S) and `crop_mask` (B, N): each kept box's enlarged crop of the original image.

        The crops go through the image processor with its own settings (and the call's), except that they are resized
        straight to the model's input size (the image processor's `crop_size`), as FineCLIP's crop transform does.
        """

        def setting(name: str) -> Any:
            return (
                images_kwargs[name]
                if images_kwargs.get(name) is not None
                else getattr(self.image_processor, name, None)
            )

        size = SizeDict(**get_size_dict(setting("crop_size"), param_name="crop_size"))
        layout = setting("input_data_format")
        pieces, rows, columns = [], [], []
        for image_index, (image, image_boxes, geometry) in enumerate(zip(images, boxes, geometries)):
            windows = crop_windows(image_boxes, crop_scale, geometry.original_height, geometry.original_width)
            for box_index, window in enumerate(windows):
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
        processed = self.image_processor(
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

    def _phrase_tokens(
        self,
        spans: list[list[tuple[int, int] | None]],
        offsets: list[list[tuple[int, int]]],
        text: list[str],
        box_mask: torch.Tensor,
        most: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, T) token masks from character spans via offsets, and (B, N) phrase ids (-1: none)."""
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
                    warnings.warn(
                        f"`phrase_spans`[{image_index}][{box_index}] = {span} ({caption[start:end]!r}) is cut off by "
                        f"truncation of caption {image_index} to {length} tokens; the box keeps no phrase",
                        stacklevel=4,
                    )
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

    # ------------------------------------------------------------------ region classification

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
            geometry = self._inverse_geometry(height, width)
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

    # ------------------------------------------------------------------ detection and segmentation

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.1,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        nms_threshold: float | None = NMS_IOU,
        top_k: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections in the original images' pixels from `detection.detect_objects`'s output (OWLv2's signature).

        Args:
            outputs: a `HarmoCLIPDetectionOutput` (`scores` (B, N, L), `pred_boxes` (B, N, 4) normalised xyxy in the
                frame of `pixel_values`, `box_mask` (B, N)).
            threshold: the least score kept, in [0, 1].
            target_sizes: per image its original (height, width); None leaves boxes normalised to the model's frame.
                Boxes go back through this processor's resize and crop (`BoxGeometry.to_original`), so non-square
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
                found["boxes"] = self._inverse_geometry(*sizes[index]).to_original(found["boxes"].double()).float()
            results.append(found)
        return results

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.0,
        return_probabilities: bool = False,
    ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """Label maps at the original images' size from `detection.detect_objects`'s `dense_probabilities`.

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
                geometry = self._inverse_geometry(height, width)
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

    def _inverse_geometry(self, height: int, width: int) -> BoxGeometry:
        """The geometry of an image of this size (only its size matters; a meta tensor stands in for it)."""
        return self.box_geometry(
            torch.empty(3, height, width, device="meta"), {"input_data_format": ChannelDimension.FIRST}
        )


def original_image_size(image: Any, input_data_format: Any = None) -> tuple[int, int]:
    """(height, width) of a PIL image, or of an array / tensor in channels-first or channels-last layout."""
    if getattr(image, "ndim", None) is None:  # a PIL image
        height, width = get_image_size(image)
    elif image.ndim == 2:
        height, width = image.shape
    else:
        layout = input_data_format or infer_channel_dimension_format(image, num_channels=(1, 3, 4))
        height, width = get_image_size(image, channel_dim=layout)
    return int(height), int(width)


def check_crop_options(return_crops: Any, crop_scale: Any) -> None:
    """Raises `TypeError` / `ValueError` naming `return_crops` or `crop_scale` unless they are a bool and a finite
    number > 0."""
    if not isinstance(return_crops, bool):
        raise TypeError(f"`return_crops` must be a bool, got {type(return_crops).__name__}: {return_crops!r}")
    if (
        not isinstance(crop_scale, (int, float))
        or isinstance(crop_scale, bool)
        or not math.isfinite(crop_scale)
        or crop_scale <= 0
    ):
        raise ValueError(f"`crop_scale` must be a finite number > 0, got {crop_scale!r}")


def crop_windows(boxes: torch.Tensor, crop_scale: float, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Pixel windows `(x0, y0, x1, y1)` of the crops of (N, 4) xyxy boxes in an image of `height` x `width` pixels.

    Each box is enlarged by `crop_scale` about its centre and clipped to the image (CLIPSelf's and FineCLIP's
    `ProposalDistillDataset.__getitem__`), then rounded to whole pixels as PIL's `Image.crop` rounds them; a window
    keeps at least one pixel, so that a sub-pixel box still has a crop.
    """
    enlarged = enlarge_boxes(boxes.double(), float(crop_scale))
    limits = enlarged.new_tensor([width, height, width, height])
    clipped = torch.minimum(enlarged.clamp(min=0), limits)
    windows = []
    for x0, y0, x1, y1 in (tuple(round(value) for value in row) for row in clipped.tolist()):
        x0, y0 = min(x0, width - 1), min(y0, height - 1)
        windows.append((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return windows


def cut_window(image: Any, window: tuple[int, int, int, int], input_data_format: Any = None) -> Any:
    """The pixels of `image` inside `window` (x0, y0, x1, y1): a PIL image for a PIL image, else a channels-last tensor
    (a crop a few pixels wide has no layout of its own to infer, so the original's is applied here)."""
    x0, y0, x1, y1 = window
    if getattr(image, "ndim", None) is None:  # a PIL image
        return image.crop(window)
    pixels = torch.as_tensor(image)
    if pixels.ndim == 2:
        return pixels[y0:y1, x0:x1, None]
    layout = input_data_format or infer_channel_dimension_format(image, num_channels=(1, 3, 4))
    if ChannelDimension(layout) == ChannelDimension.FIRST:
        return pixels[:, y0:y1, x0:x1].permute(1, 2, 0)
    return pixels[y0:y1, x0:x1, :]


def resized_image_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """(height, width) after the image processors' resize, with the same helpers and the same branch order."""
    if size.shortest_edge and size.longest_edge:
        return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
    if size.shortest_edge:
        stand_in = torch.empty(1, height, width, device="meta")
        return tuple(
            get_resize_output_image_size(
                stand_in, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        )
    if size.max_height and size.max_width:
        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
    if size.height and size.width:
        return size.height, size.width
    raise ValueError(f"HarmoCLIPProcessor cannot place boxes for an image processor `size` of {dict(size)}")


HarmoCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "HarmoCLIPProcessor",
    "BoxGeometry",
    "clip_image_processor",
    "check_crop_options",
    "crop_windows",
    "cut_window",
    "phrase_id",
    "original_image_size",
    "resized_image_size",
    "CLIP_CONTEXT_LENGTH",
    "DEFAULT_CROP_SCALE",
    "check_strings",
]
