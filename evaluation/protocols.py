"""The reference evaluation protocols by name, so that one flag reproduces FineCLIP's or CLIPSelf's setting.

Box classification (`run_box_protocol`) on COCO panoptic val (133 classes, boxes read as `panoptic.py` describes),
with class embeddings from ViLD's prompt ensemble (`prompts.py`) computed once from a model's text tower, each box
embedded by the dense path (`get_region_features`) and classified by cosine similarity:

- ``fineclip`` (FineCLIP's `scripts/test_vitb16_box.sh` and `training/zero_shot.py`): 224 px, every image resized
  to a square (`Resize((224, 224))`, bilinear, aspect ratio not kept); headline: mean per-class Top-1 over all the
  classes with boxes (`macc_with_box`); Top-5 and overall Top-1/Top-5 are reported too.
- ``clipself`` (CLIPSelf's `scripts/test_eva_vitb16_macc_boxes_masks.sh`, `training/zero_shot.py`): 1024 px with
  interpolated position embeddings, the longest side resized to 1024 (bicubic) and the rest padded with black at the
  right and bottom (`ResizeLongest`); headline: mean per-class Top-1 over thing classes and over stuff classes
  (`macc_with_is_thing`).

Retrieval (`run_retrieval_protocol`, FineCLIP's `training/test_flickr.py` / `test_mscoco.py`): every image resized
to a 224 px square (bilinear), captions and images embedded by the global towers; R@K as `metrics.retrieval_metrics`
(image->text: any of the image's captions among the K best; text->image: the caption's image among the K best).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_harmoclip.image_processing_harmoclip import DEFAULT_CROP_SCALE, BoxGeometry

from .embeddings import (
    compute_box_embeddings,
    ensemble_text_embeddings,
    evaluate_retrieval,
    load_model_and_processor,
)
from .eval_data import read_retrieval_data, region_processor
from .metrics import (
    DEFAULT_ACCURACY_KS,
    DEFAULT_RECALL_KS,
    classification_metrics,
    top_k_predictions,
)
from .panoptic import read_panoptic_boxes
from .prompts import VILD_TEMPLATES, prompt_ensemble

RESIZE_MODES = ("square", "longest-pad")


@dataclass(frozen=True)
class Protocol:
    """One reference setting. `resize`: "square" (both sides to `image_size`) or "longest-pad" (longest side to
    `image_size`, padded to a square); `headline`: "all" (mean per-class over every class) or "thing-stuff"."""

    name: str
    image_size: int
    resize: str
    interpolation: str
    headline: str
    reference: str


PROTOCOLS: dict[str, Protocol] = {
    "fineclip": Protocol(
        "fineclip", 224, "square", "bilinear", "all", "FineCLIP scripts/test_vitb16_box.sh, training/zero_shot.py"
    ),
    "clipself": Protocol(
        "clipself",
        1024,
        "longest-pad",
        "bicubic",
        "thing-stuff",
        "CLIPSelf scripts/test_eva_vitb16_macc_boxes_masks.sh, training/zero_shot.py",
    ),
}
RETRIEVAL_PROTOCOL = Protocol(
    "fineclip", 224, "square", "bilinear", "", "FineCLIP training/test_flickr.py, training/test_mscoco.py"
)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def get_protocol(name: str, image_size: int | None = None) -> Protocol:
    """The named protocol, at `image_size` if given (any size; non-native sizes interpolate position embeddings)."""
    if name not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {name!r}")
    protocol = PROTOCOLS[name]
    if image_size is None:
        return protocol
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
    return Protocol(**{**asdict(protocol), "image_size": image_size})


class ProtocolProcessor:
    """Pre-processing of a protocol in the processor's interface (what `evaluation.eval_data.image_loader` calls).

    Images are resized as the protocol says, turned into [0, 1] and normalised with the wrapped processor's
    mean and std; boxes (original pixels, xyxy) are mapped into the frame of `pixel_values` and normalised to [0, 1].
    Text goes to the wrapped processor unchanged.
    """

    def __init__(self, processor: Any, image_size: int, resize: str = "square", interpolation: str = "bilinear"):
        if resize not in RESIZE_MODES:
            raise ValueError(f"`resize` must be one of {RESIZE_MODES}, got {resize!r}")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"`interpolation` must be one of {sorted(_RESAMPLE)}, got {interpolation!r}")
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None:
            raise ValueError("`processor` must carry an `image_processor` (its mean and std are used)")
        self.processor = processor
        self.image_size = image_size
        self.resize = resize
        self.resample = _RESAMPLE[interpolation]
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(3, 1, 1)

    def as_region_mode(self) -> ProtocolProcessor:
        return self

    @property
    def tokenizer(self) -> Any:
        """The wrapped processor's tokenizer: text is encoded as the model's own processor does."""
        return self.processor.tokenizer

    def _pixels(self, image: Image.Image) -> tuple[torch.Tensor, BoxGeometry]:
        """One image -> (3, S, S) normalised pixels and where its original pixels land in them."""
        size = self.image_size
        width, height = image.size
        if self.resize == "square":
            new_width, new_height = size, size
        else:
            scale = size / max(width, height)
            new_width, new_height = round(width * scale), round(height * scale)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.convert("RGB").resize((new_width, new_height), self.resample), (0, 0))
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
        scale_x, scale_y = new_width / width, new_height / height
        if self.resize != "square":
            # As the reference: one scale for both axes (the smaller ratio), boxes normalised by the padded square.
            scale_x = scale_y = min(scale_x, scale_y)
        geometry = BoxGeometry(height, width, scale_x, scale_y, 0.0, 0.0, size, size)
        return (pixels - self.mean) / self.std, geometry

    def __call__(
        self,
        images: Any = None,
        text: Any = None,
        boxes: Any = None,
        return_tensors: str = "pt",
        return_crops: bool = False,
        crop_scale: float = DEFAULT_CROP_SCALE,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """`images`: list of PIL images; `boxes`: per image a list of [x1, y1, x2, y2] (original pixels).

        Returns `pixel_values` (B, 3, S, S); with boxes `boxes` (B, N, 4) normalised xyxy and `box_mask` (B, N);
        with text, the wrapped processor's text fields; with `return_crops`, the wrapped processor's crops of the
        original images at the model's input size (`crop_pixel_values` (B, N, 3, s, s), `crop_mask` (B, N))."""
        out: dict[str, torch.Tensor] = {}
        if text is not None:
            out.update(self.processor(text=text, return_tensors=return_tensors, **kwargs))
        if images is None:
            return out
        images = [images] if isinstance(images, Image.Image) else list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"`boxes` must have one list per image ({len(images)}), got {len(boxes)}")
        processed = [self._pixels(image) for image in images]
        out["pixel_values"] = torch.stack([pixels for pixels, _ in processed])
        if boxes is not None:
            most = max(1, max(len(image_boxes) for image_boxes in boxes))
            box_tensor = torch.zeros(len(images), most, 4)
            box_mask = torch.zeros(len(images), most, dtype=torch.bool)
            for row, (image_boxes, (_, geometry)) in enumerate(zip(boxes, processed)):
                if not image_boxes:
                    continue
                box_tensor[row, : len(image_boxes)] = geometry.to_normalized(
                    torch.tensor(image_boxes, dtype=torch.float32)
                )
                box_mask[row, : len(image_boxes)] = True
            out["boxes"], out["box_mask"] = box_tensor, box_mask
            if return_crops:
                crops = region_processor(self.processor)(
                    images=images, boxes=boxes, return_crops=True, crop_scale=crop_scale
                )
                missing = (
                    most - crops["crop_mask"].shape[1]
                )  # this frame keeps one padding row where no image has a box
                out["crop_pixel_values"] = F.pad(crops["crop_pixel_values"], (0, 0, 0, 0, 0, 0, 0, missing))
                out["crop_mask"] = F.pad(crops["crop_mask"], (0, missing))
        return out


# ---------------------------------------------------------------------------------------------------- class embeddings


def load_class_embeddings(path: str | Path, num_classes: int) -> torch.Tensor:
    """(C, D) class embeddings saved as `.npy` (e.g. FineCLIP's `metadata/*.npy`) or `.pt`, L2-normalised."""
    path = Path(path)
    if path.suffix == ".npy":
        embeds = torch.from_numpy(np.load(path)).float()
    elif path.suffix == ".pt":
        embeds = torch.load(path, map_location="cpu", weights_only=True).float()
    else:
        raise ValueError(f"`class_embeddings_from` file must end in .npy or .pt, got {str(path)!r}")
    if embeds.dim() != 2 or embeds.shape[0] != num_classes:
        raise ValueError(f"{path} holds embeddings of shape {tuple(embeds.shape)}, expected ({num_classes}, D)")
    return F.normalize(embeds, dim=-1)


def protocol_class_embeddings(
    class_names: Sequence[str],
    model: torch.nn.Module | None = None,
    processor: Any = None,
    source: str | Path | None = None,
    templates: Sequence[str] = VILD_TEMPLATES,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(C, D) class embeddings of the ViLD prompt ensemble, once for the whole evaluation.

    From `source` when given: a `.npy` / `.pt` file of embeddings, or a model folder or Hub id whose text tower
    encodes the prompts (as FineCLIP classifies with the original model's embeddings); else from `model`."""
    if source is not None and Path(source).suffix in (".npy", ".pt"):
        return load_class_embeddings(source, len(class_names))
    if source is not None:
        model, processor = load_model_and_processor(source, device)
    if model is None or processor is None:
        raise ValueError("class embeddings need `source` or both `model` and `processor`")
    return ensemble_text_embeddings(model, processor, prompt_ensemble(class_names, templates))


def save_class_embeddings(embeds: torch.Tensor, path: str | Path) -> Path:
    """Writes (C, D) embeddings as `.npy` (to reuse with `--class-embeddings-from`), through a temporary file."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"class embeddings are saved as .npy, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, embeds.float().cpu().numpy())
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------- protocols


def _mean_over(values: Sequence[float | None], keep: Sequence[bool]) -> float | None:
    chosen = [value for value, wanted in zip(values, keep) if wanted and value is not None]
    return sum(chosen) / len(chosen) if chosen else None


def run_box_protocol(
    model: torch.nn.Module,
    processor: Any,
    protocol: Protocol,
    data_path: str | Path,
    image_root: str | Path | None = None,
    segm_root: str | Path | None = None,
    class_embeds: torch.Tensor | None = None,
    class_embeddings_from: str | Path | None = None,
    methods: Sequence[str] = ("dense",),
    batch_size: int = 16,
    num_workers: int = 0,
    show_progress: bool = False,
    crop_scale: float = DEFAULT_CROP_SCALE,
) -> dict[str, Any]:
    """Box classification of COCO panoptic `data_path` under `protocol` (``crop``: each box's crop of the original
    image, enlarged `crop_scale` times, at the model's input size).

    Returns ``{method: classification_metrics(...) + thing/stuff means, "headline": {...}, "num_boxes", ...}``.
    The headline of the first method: ``mean_class_top1`` ("all") or ``thing_mean_class_top1`` and
    ``stuff_mean_class_top1`` ("thing-stuff")."""
    panoptic = read_panoptic_boxes(data_path, image_root, segm_root)
    data = panoptic.data
    pre = ProtocolProcessor(processor, protocol.image_size, protocol.resize, protocol.interpolation)
    interpolate = protocol.image_size != model.config.vision_config.image_size
    # Images first: the loader's worker processes fork before the tokenizer has started its own threads.
    embeds, labels, dropped = compute_box_embeddings(
        model,
        pre,
        data,
        methods,
        batch_size,
        num_workers,
        show_progress,
        interpolate_pos_encoding=interpolate,
        crop_scale=crop_scale,
    )
    if class_embeds is None:
        device = next(model.parameters()).device
        class_embeds = protocol_class_embeddings(
            data.class_names, model, processor, class_embeddings_from, device=device
        )
    num_classes = len(data.class_names)
    top = min(max(DEFAULT_ACCURACY_KS), num_classes)
    stuff = [not thing for thing in panoptic.class_is_thing]
    results: dict[str, Any] = {}
    for method, method_embeds in embeds.items():
        predictions, _ = top_k_predictions(method_embeds, class_embeds.to(method_embeds.dtype), top)
        figures = classification_metrics(predictions, labels, num_classes, DEFAULT_ACCURACY_KS, data.class_names)
        for k in DEFAULT_ACCURACY_KS:
            figures[f"thing_mean_class_top{k}"] = _mean_over(figures[f"per_class_top{k}"], panoptic.class_is_thing)
            figures[f"stuff_mean_class_top{k}"] = _mean_over(figures[f"per_class_top{k}"], stuff)
        results[method] = figures
    first = results[methods[0]]
    keys = ["mean_class_top1"] if protocol.headline == "all" else ["thing_mean_class_top1", "stuff_mean_class_top1"]
    results["headline"] = {"method": methods[0], **{key: first[key] for key in keys}}
    results["num_boxes"] = int(labels.numel())
    results["boxes_dropped"] = dropped
    results["num_thing_classes"] = sum(panoptic.class_is_thing)
    results["boxes_skipped_in_annotations"] = data.skipped
    return results


def run_retrieval_protocol(
    model: torch.nn.Module,
    processor: Any,
    data_path: str | Path,
    image_root: str | Path | None = None,
    data_format: str = "auto",
    split: str | None = "test",
    batch_size: int = 64,
    num_workers: int = 0,
    show_progress: bool = False,
) -> dict[str, float | int]:
    """Image-text retrieval as FineCLIP tests it: Karpathy `split` (Flickr30k 1k / COCO 5k test), every image resized
    to a square at the model's input size (224 for ViT-B/16)."""
    data = read_retrieval_data(data_path, data_format, image_root, split)
    size = model.config.vision_config.image_size
    pre = ProtocolProcessor(processor, size, RETRIEVAL_PROTOCOL.resize, RETRIEVAL_PROTOCOL.interpolation)
    return evaluate_retrieval(model, pre, data, batch_size, num_workers, DEFAULT_RECALL_KS, show_progress)


__all__ = [
    "Protocol",
    "PROTOCOLS",
    "RETRIEVAL_PROTOCOL",
    "RESIZE_MODES",
    "get_protocol",
    "ProtocolProcessor",
    "load_class_embeddings",
    "protocol_class_embeddings",
    "save_class_embeddings",
    "run_box_protocol",
    "run_retrieval_protocol",
]
