"""Evaluation metrics as pure functions on embeddings: cross-modal retrieval recall and box classification accuracy.

Similarities are computed in blocks of rows, so memory holds the embeddings plus one (block, columns) similarity
matrix, whatever the number of images and captions. Ties are broken pessimistically (a negative that scores exactly
as high as the best positive is ranked above it), so a model that gives every input the same embedding scores near
zero, not 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_RECALL_KS = (1, 5, 10)
DEFAULT_ACCURACY_KS = (1, 5)
DEFAULT_BLOCK_SIZE = 256


def _check_embeddings(embeds: torch.Tensor, name: str) -> None:
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (N, D), got {type(embeds).__name__}")
    if embeds.dim() != 2:
        raise ValueError(f"`{name}` must have shape (N, D), got {tuple(embeds.shape)}")


def _check_embedding_pair(first: torch.Tensor, first_name: str, second: torch.Tensor, second_name: str) -> None:
    """Both (N, D) tensors, of the same width D."""
    _check_embeddings(first, first_name)
    _check_embeddings(second, second_name)
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must have the same width, got {first.shape[1]} and {second.shape[1]}"
        )


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"`block_size` must be a positive int, got {block_size!r}")


def _check_ks(ks: Sequence[int], name: str = "ks") -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive ints, got {ks!r}")
    return ks


def retrieval_ranks(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the best correct match for every image and every caption.

    Args:
        image_embeds: (N, D) image embeddings (L2-normalised: the score is the dot product).
        text_embeds: (T, D) caption embeddings.
        text_to_image: (T,) long, the index of each caption's image in `image_embeds`.
        block_size: rows of the similarity matrix computed at once.
    Returns:
        image_ranks: (N,) long; for image i, the number of other images' captions scoring at least as high as i's
            best caption (-1 for an image without captions). Image i is correct at K if its rank < K.
        text_ranks: (T,) long; for caption t, the number of other images scoring at least as high as its image.
    """
    _check_embedding_pair(image_embeds, "image_embeds", text_embeds, "text_embeds")
    _check_block_size(block_size)
    num_images, num_texts = image_embeds.shape[0], text_embeds.shape[0]
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long, device=text_embeds.device)
    if tuple(text_to_image.shape) != (num_texts,):
        raise ValueError(f"`text_to_image` must have shape ({num_texts},), got {tuple(text_to_image.shape)}")
    out_of_range = (text_to_image < 0) | (text_to_image >= num_images)
    if out_of_range.any():
        index = int(out_of_range.nonzero()[0])
        raise ValueError(f"`text_to_image`[{index}] = {int(text_to_image[index])} is outside [0, {num_images})")
    image_embeds = image_embeds.to(text_embeds.device, torch.float32)
    text_embeds = text_embeds.float()

    image_ranks = torch.full((num_images,), -1, dtype=torch.long)
    for start in range(0, num_images, block_size):
        block = image_embeds[start : start + block_size] @ text_embeds.t()  # (b, T)
        rows = block.shape[0]
        # The captions of this block's images, read from the block itself (the same arithmetic as the negatives).
        caption_index = ((text_to_image >= start) & (text_to_image < start + rows)).nonzero(as_tuple=True)[0]
        caption_row = text_to_image[caption_index] - start
        best_positive = torch.full((rows,), float("-inf"), device=block.device)
        best_positive.scatter_reduce_(0, caption_row, block[caption_row, caption_index], reduce="amax")
        has_caption = torch.isfinite(best_positive)
        block[caption_row, caption_index] = float("-inf")
        ranks = (block >= best_positive[:, None]).sum(dim=1)
        image_ranks[start : start + rows] = torch.where(has_caption, ranks, torch.full_like(ranks, -1)).cpu()

    text_ranks = torch.empty(num_texts, dtype=torch.long)
    for start in range(0, num_texts, block_size):
        block = text_embeds[start : start + block_size] @ image_embeds.t()  # (b, N)
        target = text_to_image[start : start + block.shape[0]]
        positive_score = block.gather(1, target[:, None])
        block.scatter_(1, target[:, None], float("-inf"))
        text_ranks[start : start + block.shape[0]] = (block >= positive_score).sum(dim=1).cpu()
    return image_ranks, text_ranks


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_RECALL_KS) -> dict[int, float]:
    """Percentage of queries whose rank (0-based; negative ranks are ignored) is below each K."""
    ks = _check_ks(ks)
    ranks = ranks[ranks >= 0]
    if ranks.numel() == 0:
        raise ValueError("`ranks` holds no query with a correct match")
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


def retrieval_metrics(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, float | int]:
    """Image-to-text and text-to-image Recall@K (percent) with several captions per image.

    Image-to-text: an image is correct at K if any of its captions is among the K best-scoring captions.
    Text-to-image: a caption is correct at K if its image is among the K best-scoring images.
    Shapes as in `retrieval_ranks`. Returns ``{"i2t_R@1": ..., "t2i_R@1": ..., "rsum": ..., "num_images": N,
    "num_captions": T, "images_without_captions": ...}``; ``rsum`` is the sum of all recalls.
    """
    ks = _check_ks(ks)
    image_ranks, text_ranks = retrieval_ranks(image_embeds, text_embeds, text_to_image, block_size)
    image_recall = recall_at_k(image_ranks, ks)
    text_recall = recall_at_k(text_ranks, ks)
    results: dict[str, float | int] = {}
    results.update({f"i2t_R@{k}": value for k, value in image_recall.items()})
    results.update({f"t2i_R@{k}": value for k, value in text_recall.items()})
    results["rsum"] = sum(image_recall.values()) + sum(text_recall.values())
    results["num_images"] = int(image_embeds.shape[0])
    results["num_captions"] = int(text_embeds.shape[0])
    results["images_without_captions"] = int((image_ranks < 0).sum())
    return results


def top_k_predictions(
    embeds: torch.Tensor, class_embeds: torch.Tensor, k: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The K best-scoring classes of each embedding.

    Args:
        embeds: (M, D) region embeddings; class_embeds: (C, D) class text embeddings (both L2-normalised).
        k: number of predictions kept (at most C).
    Returns:
        indices (M, k) long and scores (M, k) float32, best first.
    """
    _check_embedding_pair(embeds, "embeds", class_embeds, "class_embeds")
    _check_block_size(block_size)
    if not isinstance(k, int) or not 1 <= k <= class_embeds.shape[0]:
        raise ValueError(f"`k` must be an int in [1, {class_embeds.shape[0]}], got {k!r}")
    class_embeds = class_embeds.to(embeds.device, torch.float32)
    indices = torch.empty(embeds.shape[0], k, dtype=torch.long)
    scores = torch.empty(embeds.shape[0], k, dtype=torch.float32)
    for start in range(0, embeds.shape[0], block_size):
        block = embeds[start : start + block_size].float() @ class_embeds.t()
        top = block.topk(k, dim=1)
        indices[start : start + block.shape[0]] = top.indices.cpu()
        scores[start : start + block.shape[0]] = top.values.cpu()
    return indices, scores


def classification_metrics(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_ACCURACY_KS,
    class_names: Sequence[str] | None = None,
) -> dict[str, object]:
    """Top-K accuracy (percent), overall and as the mean over classes.

    Args:
        predictions: (M, P) long class indices per sample, best first (P >= max(ks), or P = num_classes when there
            are fewer classes than K: then Top-K is Top-num_classes, and so 100).
        labels: (M,) long true class in [0, num_classes).
        num_classes: C.
        class_names: optional names used in the report of classes without samples.
    Returns:
        ``{"top1": ..., "top5": ..., "mean_class_top1": ..., "mean_class_top5": ..., "per_class_top1": [C floats, None
        for a class without samples], "num_samples": M, "num_classes": C, "num_classes_evaluated": ...,
        "classes_without_samples": [names or indices]}``; the per-class means exclude classes without samples.
    """
    ks = _check_ks(ks)
    if not isinstance(predictions, torch.Tensor) or predictions.dim() != 2:
        raise ValueError(
            f"`predictions` must be a (M, P) tensor, got {getattr(predictions, 'shape', type(predictions).__name__)}"
        )
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    predictions = predictions.long().cpu()
    if tuple(labels.shape) != (predictions.shape[0],):
        raise ValueError(f"`labels` must have shape ({predictions.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("`labels` is empty: no sample to evaluate")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(f"`labels`[{index}] = {int(labels[index])} is outside [0, {num_classes})")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"`class_names` must have {num_classes} entries, got {len(class_names)}")
    if predictions.shape[1] < min(max(ks), num_classes):
        raise ValueError(
            f"`predictions` holds {predictions.shape[1]} classes per sample, need {min(max(ks), num_classes)}"
        )

    counts = torch.bincount(labels, minlength=num_classes)
    evaluated = counts > 0
    results: dict[str, object] = {}
    for k in ks:
        hit = (predictions[:, :k] == labels[:, None]).any(dim=1).float()
        per_class = torch.zeros(num_classes).index_add_(0, labels, hit) / counts.clamp(min=1)
        results[f"top{k}"] = 100.0 * float(hit.mean())
        results[f"mean_class_top{k}"] = 100.0 * float(per_class[evaluated].mean())
        results[f"per_class_top{k}"] = [100.0 * float(v) if e else None for v, e in zip(per_class, evaluated)]
    missing = (~evaluated).nonzero(as_tuple=True)[0].tolist()
    results["num_samples"] = int(labels.numel())
    results["num_classes"] = int(num_classes)
    results["num_classes_evaluated"] = int(evaluated.sum())
    results["classes_without_samples"] = [class_names[i] for i in missing] if class_names is not None else missing
    return results


__all__ = [
    "retrieval_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "top_k_predictions",
    "classification_metrics",
]
