"""What the evaluation command and the protocols compute from a model: L2-normalised embeddings of texts, images and
ground-truth boxes (dense and crop-and-encode), the model loaded for them, and retrieval Recall@K from them.

Text goes through `modeling_harmoclip.pipeline_harmoclip.prompt_ensemble_embeddings`, the one text-encoding loop
of the project (a caption is a class of one prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import DEFAULT_CROP_SCALE, check_crop_options
from modeling_harmoclip.pipeline_harmoclip import TEXT_BATCH_SIZE, model_device, prompt_ensemble_embeddings

from .eval_data import BoxClassificationData, RetrievalData, image_loader
from .metrics import DEFAULT_RECALL_KS, retrieval_metrics

BOX_METHODS = ("dense", "crop")


# ---------------------------------------------------------------------------------------------------- embeddings


def _pooled(output: Any) -> torch.Tensor:
    """The projected embedding of `get_image_features` / `get_text_features` (a tensor in older transformers)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _progress(iterable: Any, description: str, total: int | None, show: bool) -> Any:
    return tqdm(iterable, desc=description, total=total, disable=not show, dynamic_ncols=True)


class EvalMode:
    """Puts a model in eval mode and inference mode, and restores its training flag afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.inference = torch.inference_mode()
        self.inference.__enter__()
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.inference.__exit__(*exc)
        self.model.train(self.was_training)


def compute_text_embeddings(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    texts: Sequence[str],
    batch_size: int = TEXT_BATCH_SIZE,
    show_progress: bool = False,
) -> torch.Tensor:
    """(T,) texts -> (T, D) L2-normalised float32 embeddings on the CPU, from `model.get_text_features`: each text a
    class of one prompt for `prompt_ensemble_embeddings`."""
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("`texts` must be a sequence of strings")
    if not texts:
        raise ValueError("`texts` is empty")
    with EvalMode(model):
        embeds = prompt_ensemble_embeddings(
            model,
            processor.tokenizer,
            [[text] for text in texts],
            batch_size,
            progress=lambda starts: _progress(starts, "texts", len(starts), show_progress),
        )
    return embeds.cpu()


def compute_image_embeddings(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    image_paths: Sequence[Path],
    batch_size: int = 32,
    num_workers: int = 0,
    show_progress: bool = False,
) -> torch.Tensor:
    """(N,) image files -> (N, D) L2-normalised float32 embeddings on the CPU, from `model.get_image_features`."""
    if not image_paths:
        raise ValueError("`image_paths` is empty")
    device = model_device(model)
    loader = image_loader(image_paths, processor, batch_size, num_workers)
    chunks = []
    with EvalMode(model):
        for batch in _progress(loader, "images", len(loader), show_progress):
            output = model.get_image_features(pixel_values=batch["pixel_values"].to(device))
            chunks.append(F.normalize(_pooled(output).float(), dim=-1).cpu())
    return torch.cat(chunks)


def ensemble_text_embeddings(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    prompts: Sequence[Sequence[str]],
    batch_size: int = TEXT_BATCH_SIZE,
) -> torch.Tensor:
    """(C,) lists of P prompts each -> (C, D) float32 on the CPU: `pipeline_harmoclip.prompt_ensemble_embeddings`
    (every prompt encoded and normalised, each class's mean normalised), the model in eval mode."""
    with EvalMode(model):
        return prompt_ensemble_embeddings(model, processor.tokenizer, prompts, batch_size).cpu()


def crop_features(model: torch.nn.Module, crop_pixel_values: torch.Tensor, crop_mask: torch.Tensor) -> torch.Tensor:
    """Crop-and-encode baseline: `get_crop_features` of the processor's crops of the original image
    (`processor(..., return_crops=True)`), in the model's dtype.

    Args:
        crop_pixel_values: (B, N, 3, S, S); crop_mask: (B, N).
    Returns:
        (B, N, D) float32, L2-normalised; masked rows are zeros.
    """
    dtype = next(model.parameters()).dtype
    return model.get_crop_features(crop_pixel_values.to(dtype), crop_mask)


def compute_box_embeddings(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    data: BoxClassificationData,
    methods: Sequence[str] = BOX_METHODS,
    batch_size: int = 16,
    num_workers: int = 0,
    show_progress: bool = False,
    interpolate_pos_encoding: bool = False,
    crop_scale: float = DEFAULT_CROP_SCALE,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Embeddings of every ground-truth box, by each method, from one pass over the images (``crop``: each box's crop
    of the original image, enlarged `crop_scale` times).

    `interpolate_pos_encoding` lets the dense path read images of another size than the model's (e.g. 1024 px).

    Returns:
        embeds: {method: (M, D) float32 L2-normalised}, labels: (M,) long, dropped: boxes the processor masked
        (e.g. left empty), which are left out of `embeds` and `labels`.
    """
    unknown = [method for method in methods if method not in BOX_METHODS]
    if unknown or not methods:
        raise ValueError(f"`methods` must be a non-empty subset of {BOX_METHODS}, got {list(methods)!r}")
    if not data.images:
        raise ValueError(f"{data.source or 'the data'} holds no labelled box")
    check_crop_options(True, crop_scale)
    device = model_device(model)
    loader = image_loader(
        [image.path for image in data.images],
        processor,
        batch_size,
        num_workers,
        boxes=[image.boxes for image in data.images],
        crop_scale=crop_scale if "crop" in methods else None,
    )
    embeds: dict[str, list[torch.Tensor]] = {method: [] for method in methods}
    labels: list[int] = []
    dropped = 0
    next_image = 0
    with EvalMode(model):
        for batch in _progress(loader, "images", len(loader), show_progress):
            pixel_values = batch["pixel_values"].to(device)
            boxes = batch["boxes"].to(device)
            box_mask = batch["box_mask"].to(device=device, dtype=torch.bool)
            # Rows beyond an image's own boxes are padding; a masked row within them is a box the processor dropped.
            keep = torch.zeros_like(box_mask)
            for row in range(pixel_values.shape[0]):
                image = data.images[next_image + row]
                own = box_mask[row, : len(image.boxes)]
                keep[row, : len(image.boxes)] = own
                labels.extend(label for label, kept in zip(image.labels, own.tolist()) if kept)
                dropped += int((~own).sum())
            next_image += pixel_values.shape[0]
            if "dense" in embeds:
                regions = model.get_region_features(
                    pixel_values=pixel_values,
                    boxes=boxes,
                    box_mask=keep,
                    interpolate_pos_encoding=interpolate_pos_encoding,
                )
                embeds["dense"].append(regions[keep].float().cpu())
            if "crop" in embeds:
                crops = batch["crop_pixel_values"].to(device)
                embeds["crop"].append(crop_features(model, crops, keep & batch["crop_mask"].to(device))[keep].cpu())
    if not labels:
        raise ValueError(f"every box of {data.source or 'the data'} was dropped by the processor")
    return (
        {method: torch.cat(chunks) for method, chunks in embeds.items()},
        torch.tensor(labels, dtype=torch.long),
        dropped,
    )


def evaluate_retrieval(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    data: RetrievalData,
    batch_size: int = 32,
    num_workers: int = 0,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    show_progress: bool = False,
) -> dict[str, float | int]:
    """Image-to-text and text-to-image Recall@K (percent) on `data`; see `metrics.retrieval_metrics`."""
    image_embeds = compute_image_embeddings(model, processor, data.image_paths, batch_size, num_workers, show_progress)
    text_embeds = compute_text_embeddings(model, processor, data.captions, show_progress=show_progress)
    return retrieval_metrics(image_embeds, text_embeds, torch.tensor(data.caption_image), ks)


def load_model_and_processor(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """`AutoModel` (remote code allowed) and `AutoProcessor` from a folder or Hub id, the model in eval mode."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(path, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    return model, processor


__all__ = [
    "BOX_METHODS",
    "EvalMode",
    "compute_text_embeddings",
    "compute_image_embeddings",
    "ensemble_text_embeddings",
    "crop_features",
    "compute_box_embeddings",
    "evaluate_retrieval",
    "load_model_and_processor",
]
