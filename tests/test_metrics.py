"""Retrieval recall and classification accuracy on hand-built embeddings with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evaluation.metrics import (
    classification_metrics,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
    top_k_predictions,
)


def _one_hot(indices: list[int], width: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(indices), width).float()


def _five_captions_each(num_images: int) -> torch.Tensor:
    return torch.arange(num_images).repeat_interleave(5)


@pytest.mark.parametrize("block_size", [1, 3, 256])
def test_perfect_embeddings_give_full_recall(block_size):
    torch.manual_seed(0)
    images = F.normalize(torch.randn(12, 64), dim=-1)
    caption_image = _five_captions_each(12)
    captions = images[caption_image]  # every caption equals its image
    results = retrieval_metrics(images, captions, caption_image, block_size=block_size)
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert results[key] == pytest.approx(100.0)
    assert results["rsum"] == pytest.approx(600.0)
    assert (results["num_images"], results["num_captions"], results["images_without_captions"]) == (12, 60, 0)


def test_known_permutation_gives_known_recall():
    # 10 images on orthogonal axes; captions of images 0-5 match their image, captions of images 6-9 point at the
    # axis of another image (a cyclic shift among 6..9): their image is ranked below the wrong one.
    num_images = 10
    images = torch.eye(num_images)
    caption_image = _five_captions_each(num_images)
    pointed = {i: i for i in range(6)} | {6: 7, 7: 8, 8: 9, 9: 6}
    captions = torch.stack([images[pointed[int(i)]] for i in caption_image])
    results = retrieval_metrics(images, captions, caption_image, ks=(1, 2, 10))
    assert results["t2i_R@1"] == pytest.approx(60.0)
    assert results["i2t_R@1"] == pytest.approx(60.0)
    # A wrongly embedded caption scores 0 with its image, tied with 8 other images and below one: pessimistic ties
    # rank its image last of the 10, so it is found only at K = 10.
    assert results["t2i_R@2"] == pytest.approx(60.0)
    assert results["t2i_R@10"] == pytest.approx(100.0)
    # Images 6-9 score 0 with all their captions, as with 40+ other captions: never in the top 10 of 50.
    assert results["i2t_R@10"] == pytest.approx(60.0)


def test_recall_counts_an_image_correct_if_any_caption_is_in_top_k():
    # Image 0's captions: one exact (score 1), four pointing elsewhere. Image 1's captions all exact.
    images = torch.eye(3)[:2]
    captions = torch.stack([torch.eye(3)[0]] + [torch.eye(3)[2]] * 4 + [torch.eye(3)[1]] * 5)
    caption_image = torch.tensor([0] * 5 + [1] * 5)
    image_ranks, text_ranks = retrieval_ranks(images, captions, caption_image, block_size=1)
    assert image_ranks.tolist() == [0, 0]
    assert recall_at_k(image_ranks, (1,))[1] == 100.0
    # The four off-axis captions score 0 against both images: tied, pessimistic rank 1.
    assert text_ranks.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_ranks_match_a_brute_force_reference():
    torch.manual_seed(1)
    images = F.normalize(torch.randn(7, 8), dim=-1)
    caption_image = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6])
    captions = F.normalize(images[caption_image] + 0.9 * torch.randn(len(caption_image), 8), dim=-1)
    image_ranks, text_ranks = retrieval_ranks(images, captions, caption_image, block_size=2)
    scores = images @ captions.t()
    for i in range(7):
        positive = caption_image == i
        best = scores[i][positive].max()
        assert image_ranks[i] == int((scores[i][~positive] >= best).sum())
    for t in range(len(caption_image)):
        target = int(caption_image[t])
        others = torch.cat([scores[:target, t], scores[target + 1 :, t]])
        assert text_ranks[t] == int((others >= scores[target, t]).sum())


def test_constant_embeddings_do_not_score_full_recall():
    images = torch.ones(20, 4) / 2
    captions = torch.ones(100, 4) / 2
    results = retrieval_metrics(images, captions, _five_captions_each(20))
    assert results["i2t_R@1"] == 0.0 and results["t2i_R@1"] == 0.0


def test_images_without_captions_are_excluded_and_reported():
    images = torch.eye(4)
    caption_image = torch.tensor([0, 0, 2])
    results = retrieval_metrics(images, images[caption_image], caption_image)
    assert results["images_without_captions"] == 2
    assert results["i2t_R@1"] == 100.0


def test_retrieval_rejects_bad_input():
    images, captions = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"text_to_image`\[1\] = 3"):
        retrieval_metrics(images, captions, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(images, captions, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same width"):
        retrieval_metrics(images, torch.eye(4)[:3], torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="block_size"):
        retrieval_metrics(images, captions, torch.tensor([0, 1, 2]), block_size=0)
    with pytest.raises(TypeError, match="image_embeds"):
        retrieval_metrics([[1.0]], captions, torch.tensor([0, 1, 2]))


def test_known_confusion_gives_known_accuracies():
    # Class 0: 4 samples, 3 right. Class 1: 1 sample, wrong. Class 2: 5 samples, all right. Class 3: none.
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    top1 = torch.tensor([0, 0, 0, 2, 0, 2, 2, 2, 2, 2])
    second = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # sample 4's true class is its 2nd guess
    predictions = torch.stack([top1, second, torch.full_like(top1, 3)], dim=1)
    results = classification_metrics(predictions, labels, num_classes=4, ks=(1, 2), class_names=["a", "b", "c", "d"])
    assert results["top1"] == pytest.approx(80.0)
    assert results["mean_class_top1"] == pytest.approx(100 * (0.75 + 0.0 + 1.0) / 3)
    assert results["top2"] == pytest.approx(100.0)
    assert results["mean_class_top2"] == pytest.approx(100.0)
    assert results["per_class_top1"] == [pytest.approx(75.0), 0.0, 100.0, None]
    assert results["classes_without_samples"] == ["d"]
    assert (results["num_samples"], results["num_classes"], results["num_classes_evaluated"]) == (10, 4, 3)


def test_top_k_predictions_in_blocks_match_full_topk():
    torch.manual_seed(2)
    embeds = F.normalize(torch.randn(37, 16), dim=-1)
    classes = F.normalize(torch.randn(9, 16), dim=-1)
    indices, scores = top_k_predictions(embeds, classes, k=5, block_size=4)
    reference = (embeds @ classes.t()).topk(5, dim=1)
    assert torch.equal(indices, reference.indices)
    assert torch.allclose(scores, reference.values)
    with pytest.raises(ValueError, match="`k`"):
        top_k_predictions(embeds, classes, k=10)


def test_fewer_classes_than_k_counts_every_class():
    labels = torch.tensor([0, 1, 2])
    predictions = torch.tensor([[1, 0, 2], [1, 0, 2], [1, 0, 2]])
    results = classification_metrics(predictions, labels, num_classes=3)
    assert results["top1"] == pytest.approx(100 / 3)
    assert results["top5"] == pytest.approx(100.0)


def test_classification_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels`\[1\] = 7"):
        classification_metrics(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 7]), num_classes=5)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0]), num_classes=5)
