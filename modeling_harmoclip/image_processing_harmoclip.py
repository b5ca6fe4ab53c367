"""HarmoCLIP's image processor: CLIP's, plus where boxes land and how results go back to the original pixels.

`HarmoCLIPImageProcessor` is transformers' CLIP image processor (torchvision-backed where torchvision is installed,
PIL-backed otherwise; the same settings either way) with what box tasks need from the image side, as OWLv2's image
processor carries its own post-processing. In the order of this file:

- reading an image: upright (its EXIF orientation applied), RGB, fully decoded, or one line saying which file and
  why not (`read_image`), the one way every entry point of the project reads images;
- box operations: COCO's xywh and xyxy, enlarging about the centre, IoU and (class-wise) non-maximum suppression;
- the resize geometry and its inverse (`BoxGeometry`, `box_geometry`, `inverse_geometry`): the map from an image's
  pixels to the frame of its `pixel_values`, computed by the same function the resize itself uses
  (`resized_image_size`);
- the crops of the original image (`cut_crops`): each box enlarged about its centre, cut and resized to the model's
  input size (the GR teacher's input and the crop-and-encode baseline's);
- every `post_process_*`: region classification, object detection (OWLv2's signature), semantic segmentation and
  phrase grounding, with the selection of detections and the label map at an image's size they use.

`HarmoCLIPProcessor` joins it with the tokenizer and forwards the `post_process_*` calls. Very large images: PIL's
decompression-bomb guard, `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485 pixels by default), is a hard limit here: an image
above it is refused with one line (PIL itself only warns up to twice the limit). Raise the limit, or set it to None,
to read larger images.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.image_processing_utils import get_size_dict
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    ChannelDimension,
    SizeDict,
    get_image_size,
    get_image_size_for_max_height_width,
    infer_channel_dimension_format,
)
from transformers.image_utils import load_image as load_remote_image
from transformers.utils import is_torchvision_available

# The configuration file is imported for its check of the transformers version (and its threshold check).
from .configuration_harmoclip import check_threshold

# CLIP's image processor, in the form this transformers release has: 5.x after the image-processor rework has a
# torchvision backend (`CLIPImageProcessor`) and a PIL one (`CLIPImageProcessorPil`); 4.57 and early 5.x have a
# NumPy/PIL `CLIPImageProcessor` and a torchvision `CLIPImageProcessorFast`.
try:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if is_torchvision_available():
        from transformers import CLIPImageProcessor as _CLIPImageProcessor
    else:
        _CLIPImageProcessor = CLIPImageProcessorPil
    _TAKES_SIZE_DICT = True  # both backends resize to a `SizeDict`
except ImportError:
    if is_torchvision_available():
        from transformers import CLIPImageProcessorFast as _CLIPImageProcessor

        _TAKES_SIZE_DICT = True
    else:
        from transformers import CLIPImageProcessor as _CLIPImageProcessor

        _TAKES_SIZE_DICT = False  # NumPy arrays and size dicts, resized by the same helpers `resized_image_size` uses

# Which library pads a centre crop larger than the image (they put the odd pixel on different sides).
_BACKEND = "torchvision" if is_torchvision_available() else "pil"
# Enlargement of a box about its centre before its crop is cut, as CLIPSelf and FineCLIP cut their teacher crops.
DEFAULT_CROP_SCALE = 1.5
# IoU above which a box suppresses a worse one of its label (class-wise NMS of the detection post-processing).
NMS_IOU = 0.5
# The label-map value of a pixel no label claims (the background).
BACKGROUND_INDEX = -1
# The least probability a pixel's best label needs in the segmentation pipeline: on the synthetic held-out split (the
# first 100 images, the main job's model) mIoU was 14.3 at 0, 15.2 at 0.3, 9.8 at 0.5, because the "background" text,
# never in a training caption there, rarely wins a pixel alone.
SEGMENTATION_THRESHOLD = 0.3
# EXIF tag 0x0112: how the stored pixels are turned for display (1: as stored).
EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------- reading an image


class ImageReadError(ValueError):
    """An image that cannot be read; the message is one line naming the file."""


def image_name(source: Any) -> str:
    """How an error names `source`: its path, its file name, or what it is."""
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return text if len(text) <= 200 else text[:80] + "..."  # a base64 string is not a name
    filename = getattr(source, "filename", None) or getattr(source, "name", None)
    if isinstance(filename, str) and filename:
        return filename
    return f"<{type(source).__name__}>"


def upright_rgb(image: Any) -> Any:
    """A PIL image turned by its EXIF orientation (display frame) and converted to RGB; a new image, the tag gone.
    Applying it twice is applying it once."""
    import PIL.ImageOps  # Pillow is transformers' vision dependency: wherever images are processed, it is there

    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = PIL.ImageOps.exif_transpose(image)
    return image.convert("RGB")


def read_image(source: Any, name: str | None = None, timeout: float | None = None) -> Any:
    """The image in `source`, upright and RGB (a `PIL.Image.Image`, fully decoded).

    Args:
        source: a path (str or `Path`), an http(s) URL, a base64 string or data URI (as transformers' `load_image`
            takes them), the file's bytes, a binary file object, or a PIL image.
        name: what an error calls the image (default: the path, or the file object's name).
        timeout: seconds to wait for a URL.

    Raises:
        ImageReadError (a ValueError): missing, truncated or corrupt file, not an image, or over PIL's pixel limit,
            in one line naming the file.
        TypeError: `source` is none of the above.
    """
    import PIL.Image

    where = name or image_name(source)
    if isinstance(source, PIL.Image.Image):
        if source.mode == "RGB" and source.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return source  # already upright RGB (the common case in the processor): no copy
        return upright_rgb(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and not os.path.isfile(source):
        # A URL, or transformers' other string forms (base64, data URI); anything else is a missing file.
        is_url = source.startswith(("http://", "https://"))
        try:
            return upright_rgb(load_remote_image(source, timeout=timeout))
        except Exception as error:  # network and decoding errors alike: one line
            reason = f"{type(error).__name__}: {error}".splitlines()[0] if is_url else "no such file"
            raise ImageReadError(f"cannot read image {where}: {reason}") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, str) and not hasattr(source, "read"):
        raise TypeError(
            f"image must be a path, URL, bytes, binary file or PIL image, got {type(source).__name__} for {where}"
        )
    with one_line_errors(where):
        with PIL.Image.open(source) as image:
            image.load()  # decode now: a truncated file fails here, naming it, not later in a transform
            return upright_rgb(image)


def check_image_bytes(data: bytes, name: str) -> None:
    """Checks, without decoding the pixels, that `data` is an image PIL identifies, within PIL's pixel limit and whose
    structure verifies (`Image.verify`): data preparation's cheap check. A truncated file can pass it; `read_image`
    still reports it when the image is read. Raises `ImageReadError` in one line naming `name`."""
    import PIL.Image

    with one_line_errors(name):
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.verify()


@contextmanager
def one_line_errors(where: str) -> Iterator[None]:
    """Turns what PIL raises for an unusable image (and its decompression-bomb warning) into one `ImageReadError`."""
    import PIL.Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            yield
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        limit = PIL.Image.MAX_IMAGE_PIXELS
        raise ImageReadError(
            f"cannot read image {where}: over PIL's decompression-bomb limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS; raise it, or set it to None, to read it): {error}"
        ) from None
    except PIL.UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {where}: not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(
            f"cannot read image {where}: truncated or corrupt ({type(error).__name__}: {error})"
        ) from None


# ---------------------------------------------------------------------------------------------- box operations


def xywh_to_xyxy(boxes: torch.Tensor | Sequence[float]) -> torch.Tensor | list[float]:
    """COCO's `[x, y, w, h]` -> `[x1, y1, x2, y2]`: a (..., 4) tensor, or one box as a list of floats."""
    if isinstance(boxes, torch.Tensor):
        return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)
    x, y, w, h = (float(value) for value in boxes)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(boxes: torch.Tensor | Sequence[float]) -> torch.Tensor | list[float]:
    """`[x1, y1, x2, y2]` -> COCO's `[x, y, w, h]`: a (..., 4) tensor, or one box as a list of floats."""
    if isinstance(boxes, torch.Tensor):
        return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)
    x1, y1, x2, y2 = (float(value) for value in boxes)
    return [x1, y1, x2 - x1, y2 - y1]


def enlarge_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scales xyxy boxes (..., 4) about their centres by `scale` (no clipping: RoIAlign reads zeros outside)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=-1)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (M, 4) xyxy boxes -> (N, M) intersection over union (0 where both are empty)."""
    area_first = (first[:, 2] - first[:, 0]).clamp(min=0) * (first[:, 3] - first[:, 1]).clamp(min=0)
    area_second = (second[:, 2] - second[:, 0]).clamp(min=0) * (second[:, 3] - second[:, 1]).clamp(min=0)
    top_left = torch.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = torch.minimum(first[:, None, 2:], second[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_first[:, None] + area_second[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = NMS_IOU) -> torch.Tensor:
    """Greedy non-maximum suppression: (N, 4) xyxy boxes, (N,) scores -> int64 indices of the kept boxes, best first.

    A box is dropped when its IoU with a better kept box is above `iou_threshold`; equal scores keep the earlier box.
    """
    iou_threshold = check_threshold(iou_threshold, "iou_threshold")
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order].float(), boxes[order].float()) > iou_threshold
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for position in range(len(order)):
        if not suppressed[position]:
            keep.append(position)
            suppressed |= overlaps[position].cpu()
    return order[torch.tensor(keep, dtype=torch.int64)] if keep else order[:0]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = NMS_IOU
) -> torch.Tensor:
    """Class-wise NMS: boxes suppress only boxes of their own label. (N, 4), (N,), (N,) -> kept indices, best first."""
    kept = [
        torch.nonzero(labels == label).flatten()[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
        for label in labels.unique().tolist()
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.int64)
    kept = torch.cat(kept).sort().values  # equal scores: the earlier box first
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


# ---------------------------------------------------------------------------------------------- geometry


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


def crop_shift(size: int, crop: int, backend: str) -> float:
    """Offset added to a coordinate by centre-cropping `size` pixels to `crop` (zero-padding when crop > size).

    Mirrors the image processors: both crop at floor((size - crop) / 2); when padding, torchvision puts
    floor((crop - size) / 2) pixels before the image and the PIL/NumPy backend ceil((crop - size) / 2).
    """
    if crop <= size:
        return -float((size - crop) // 2)
    padding = crop - size
    return float(padding // 2 if backend == "torchvision" else (padding + 1) // 2)


def original_image_size(image: Any, input_data_format: Any = None) -> tuple[int, int]:
    """(height, width) of a PIL image, or of an array / tensor in channels-first or channels-last layout."""
    if getattr(image, "ndim", None) is None:  # a PIL image (its size is (width, height))
        width, height = image.size
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
    raise ValueError(f"HarmoCLIPImageProcessor cannot resize to a `size` of {dict(size)}")


# ---------------------------------------------------------------------------------------------- checks of arguments


def check_top_k(top_k: Any) -> int | None:
    """`top_k` as a positive int or None (keep all); a `ValueError` naming it otherwise."""
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive int or None, got {top_k!r}")
    return top_k


def check_target_sizes(target_sizes: Any, batch: int) -> list[tuple[int, int]]:
    """Per image its (height, width) as positive ints, one per image of the batch."""
    if target_sizes is None or len(target_sizes) != batch:
        count = "None" if target_sizes is None else f"{len(target_sizes)} entries"
        raise ValueError(f"`target_sizes` must hold one (height, width) per image ({batch}), got {count}")
    sizes = []
    for index, size in enumerate(target_sizes):
        values = [int(value) for value in size] if len(size) == 2 else []
        if len(values) != 2 or min(values) < 1 or any(float(a) != b for a, b in zip(size, values)):
            raise ValueError(f"`target_sizes`[{index}] must be a (height, width) of positive ints, got {size!r}")
        sizes.append((values[0], values[1]))
    return sizes


# ---------------------------------------------------------------------------------------------- post-processing


def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    box_mask: torch.Tensor | None = None,
    threshold: float = 0.1,
    nms_threshold: float | None = NMS_IOU,
    top_k: int | None = None,
) -> dict[str, torch.Tensor]:
    """One image's detections: every (box, label) pair scoring at least `threshold`, class-wise NMS, best first.

    Args:
        scores: (N, L) label probabilities per box; boxes: (N, 4) xyxy (any frame); box_mask: (N,) valid boxes.
        nms_threshold: IoU above which a box suppresses a worse one of its label (None: no NMS, e.g. user boxes).
        top_k: detections kept (all if None).
    Returns:
        `{"scores": (K,), "labels": (K,) int64 label indices, "boxes": (K, 4)}`, best first.
    """
    threshold = check_threshold(threshold)
    top_k = check_top_k(top_k)
    valid = torch.ones(len(scores), dtype=torch.bool) if box_mask is None else box_mask.cpu().bool()
    scores, boxes = scores.detach().float().cpu(), boxes.detach().float().cpu()
    pair = ((scores >= threshold) & valid[:, None]).nonzero()  # (K, 2): box, label
    pair_scores, pair_labels, pair_boxes = scores[pair[:, 0], pair[:, 1]], pair[:, 1], boxes[pair[:, 0]]
    if nms_threshold is None:
        keep = torch.sort(pair_scores, descending=True, stable=True).indices
    else:
        keep = batched_nms(pair_boxes, pair_scores, pair_labels, nms_threshold)
    keep = keep[:top_k] if top_k is not None else keep
    return {"scores": pair_scores[keep], "labels": pair_labels[keep], "boxes": pair_boxes[keep]}


def resample_maps(maps: torch.Tensor, frame_x: torch.Tensor, frame_y: torch.Tensor) -> torch.Tensor:
    """(C, h, w) maps over the model's input frame, read bilinearly at normalised frame coordinates (W,) and (H,) of
    each target pixel's centre -> (C, H, W); points outside the frame read 0."""
    grid_y, grid_x = torch.meshgrid(frame_y * 2 - 1, frame_x * 2 - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(maps.dtype)
    # The border half-patch repeats the edge patch; points beyond the frame are zeroed explicitly.
    resampled = F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = ((frame_y >= 0) & (frame_y <= 1))[:, None] & ((frame_x >= 0) & (frame_x <= 1))[None, :]
    return resampled * inside.to(resampled.dtype)


def semantic_label_map(
    probabilities: torch.Tensor,
    background: torch.Tensor | None,
    frame_x: torch.Tensor,
    frame_y: torch.Tensor,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's label map at its size: (L, h, w) label and (h, w) background probabilities, upsampled to the target
    pixels (`resample_maps`), then each pixel's best label, or `BACKGROUND_INDEX` (-1) where the background's probability is
    higher or the best label's is below `threshold`.

    Returns:
        (H, W) int64 label map and (L, H, W) float32 upsampled probabilities.
    """
    threshold = check_threshold(threshold)
    maps = probabilities.float() if background is None else torch.cat([probabilities.float(), background[None].float()])
    upsampled = resample_maps(maps, frame_x, frame_y)
    labels_up = upsampled[: len(probabilities)]
    best, label_map = labels_up.max(dim=0)
    is_background = best < threshold
    if background is not None:
        is_background |= upsampled[-1] > best
    # Points outside the model's frame (cut by a centre crop) were never seen.
    is_background |= upsampled.sum(dim=0) <= 0
    return torch.where(is_background, torch.full_like(label_map, BACKGROUND_INDEX), label_map), labels_up


# ---------------------------------------------------------------------------------------------- the image processor


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

    if _TAKES_SIZE_DICT:  # the NumPy processor of older releases resizes with `resized_image_size`'s helpers itself

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
            backend = getattr(self, "backend", None) or _BACKEND
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
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"`labels` must be a list of strings, one per column of `probabilities`, got {labels!r}")
        labels = list(labels)
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

__all__ = [
    "HarmoCLIPImageProcessor",
    "BoxGeometry",
    "ImageReadError",
    "read_image",
    "check_image_bytes",
    "DEFAULT_CROP_SCALE",
    "NMS_IOU",
    "BACKGROUND_INDEX",
    "SEGMENTATION_THRESHOLD",
    "clip_image_processor",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "enlarge_boxes",
    "box_iou",
    "nms",
    "batched_nms",
    "original_image_size",
    "resized_image_size",
    "crop_windows",
    "check_top_k",
    "select_detections",
    "semantic_label_map",
]
