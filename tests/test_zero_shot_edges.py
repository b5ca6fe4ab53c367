"""Zero-shot scoring at its edges: each argument check's message in full, the caller's label embeddings checked and
converted, the background label's embedding and its refusals, the label cache's keys and its least-recently-used
bound, against the loop reference of `region_reference` and counts of the text tower's passes."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import text_tower_calls, tiny_harmoclip_model
from modeling_harmoclip import image_processing_harmoclip, modeling_harmoclip, pipeline_harmoclip
from region_reference import reference_label_embeds

TEMPLATES = ["a photo of a {}.", "a sketch of the {}."]


def test_string_checks_name_the_argument_and_the_item() -> None:
    assert pipeline_harmoclip.check_strings(("a", "b"), "labels") == ["a", "b"]
    for bad in ("dog", [], {"dog"}, None):
        with pytest.raises(TypeError) as error:
            pipeline_harmoclip.check_strings(bad, "labels")
        assert str(error.value) == f"`labels` must be a non-empty list of strings, got {bad!r}"
    with pytest.raises(TypeError) as error:
        pipeline_harmoclip.check_strings(["dog", 3], "labels")
    assert str(error.value) == "`labels`[1] must be a string, got int: 3"
    with pytest.raises(TypeError, match=r"^`templates` must be a non-empty list of strings"):
        pipeline_harmoclip.check_templates("a photo of a {}.")
    with pytest.raises(ValueError) as error:
        pipeline_harmoclip.check_templates(["a {}", "a photo"])
    assert str(error.value) == "`templates`[1] must contain '{}' where the label goes, got 'a photo'"
    assert image_processing_harmoclip.check_top_k(1) == 1 and image_processing_harmoclip.check_top_k(2) == 2


def test_label_functions_name_their_label_argument(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=3)
    with pytest.raises(TypeError, match=r"^`labels` must be a non-empty list of strings, got 'dog'$"):
        pipeline_harmoclip.label_embeddings(model, tiny_tokenizer, "dog")
    with pytest.raises(TypeError, match=r"^`labels` must be a non-empty list of strings, got 'dog'$"):
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, "dog")
    with pytest.raises(TypeError, match=r"^`candidate_labels` must be a non-empty list of strings, got 'dog'$"):
        pipeline_harmoclip.encode_candidates(model, tiny_tokenizer, "dog")


def test_label_embeddings_encode_in_batches_of_the_given_size(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=3)
    calls = text_tower_calls(model)
    embeds = pipeline_harmoclip.label_embeddings(model, tiny_tokenizer, ["dog", "tree", "sky"], TEMPLATES, batch_size=1)
    assert calls[0] == 6  # 3 labels x 2 templates, one prompt per pass
    reference = reference_label_embeds(model, tiny_tokenizer, ["dog", "tree", "sky"], TEMPLATES)
    torch.testing.assert_close(embeds.double(), reference, atol=1e-5, rtol=0)


def test_the_callers_label_embeddings_are_checked_and_made_float32(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=3)  # projection_dim 16
    labels = ["dog", "tree"]
    given = torch.randn(2, 16, dtype=torch.float64)
    used = pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, labels, label_embeds=given)
    assert used.dtype == torch.float32 and torch.equal(used, given.float())
    for bad, got in [([[0.0] * 16] * 2, "list"), (torch.zeros(16), "(16,)"), (torch.zeros(1, 2, 16), "(1, 2, 16)")]:
        with pytest.raises(ValueError) as error:
            pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, labels, label_embeds=bad)
        assert str(error.value) == f"`label_embeds` must be a (2, D) tensor, got {got}"
    with pytest.raises(ValueError) as error:
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, labels, label_embeds=torch.zeros(2, 8))
    assert str(error.value) == "`label_embeds` must have shape (2, 16) for 2 labels, got (2, 8)"


def test_scoring_refuses_label_embeddings_that_are_not_a_matrix() -> None:
    embeds = torch.ones(3, 4)
    for bad in (torch.ones(4), torch.ones(2, 2, 4)):
        with pytest.raises(ValueError, match=r"^`label_embeds` must have shape \(L, 4\) to match `embeds` \(3, 4\)"):
            modeling_harmoclip.label_probabilities(embeds, bad, 10.0)


def test_the_background_label_is_encoded_with_the_templates_and_checked(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=4)
    labels = ["dog", "tree"]
    embeds, background = pipeline_harmoclip.encode_candidates(model, tiny_tokenizer, labels, "nothing", TEMPLATES)
    reference = reference_label_embeds(model, tiny_tokenizer, labels + ["nothing"], TEMPLATES)
    torch.testing.assert_close(embeds.double(), reference[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(background.double(), reference[2], atol=1e-5, rtol=0)
    embeds, none = pipeline_harmoclip.encode_candidates(model, tiny_tokenizer, labels, None, TEMPLATES)
    assert none is None and embeds.shape == (2, 16)
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError) as error:
            pipeline_harmoclip.encode_candidates(model, tiny_tokenizer, labels, bad)
        assert str(error.value) == f"`background_label` must be a non-empty string or None, got {bad!r}"
    with pytest.raises(ValueError) as error:
        pipeline_harmoclip.encode_candidates(model, tiny_tokenizer, labels, "tree")
    assert str(error.value) == "`background_label` 'tree' is also a candidate label; choose another or None"


def test_uncached_embeddings_are_the_reference_and_leave_the_cache_alone(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=5)
    calls = text_tower_calls(model)
    plain = pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, ["dog", "sky"], TEMPLATES, cache=False)
    reference = reference_label_embeds(model, tiny_tokenizer, ["dog", "sky"], TEMPLATES)
    torch.testing.assert_close(plain.double(), reference, atol=1e-5, rtol=0)
    encoded = calls[0]
    pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, ["dog", "sky"], TEMPLATES)
    assert calls[0] > encoded  # nothing was cached by the uncached call


def test_the_cache_is_per_tokenizer_and_cleared_per_model_or_for_all(tiny_tokenizer) -> None:
    first, second = tiny_harmoclip_model(seed=6), tiny_harmoclip_model(seed=7)
    first_calls, second_calls = text_tower_calls(first), text_tower_calls(second)
    pipeline_harmoclip.clear_label_cache(first)  # a model never cached: nothing to forget, no error
    for model in (first, second):
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, ["dog"], TEMPLATES)
    assert (first_calls[0], second_calls[0]) == (1, 1)
    pipeline_harmoclip.resolve_label_embeddings(first, copy.deepcopy(tiny_tokenizer), ["dog"], TEMPLATES)
    assert first_calls[0] == 2  # another tokenizer object: encoded again
    pipeline_harmoclip.clear_label_cache(first)
    for model in (first, second):
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, ["dog"], TEMPLATES)
    assert (first_calls[0], second_calls[0]) == (3, 1)  # only the first model's entries were forgotten
    pipeline_harmoclip.clear_label_cache()
    for model in (first, second):
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, ["dog"], TEMPLATES)
    assert (first_calls[0], second_calls[0]) == (4, 2)


def test_the_cache_keeps_the_most_recently_used_entries(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=8)
    calls = text_tower_calls(model)
    size = pipeline_harmoclip.LABEL_CACHE_SIZE
    assert size == 32
    sets = [[f"label {index}"] for index in range(size + 1)]
    for labels in sets[:size]:
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, labels, TEMPLATES[:1])
    assert calls[0] == size
    pipeline_harmoclip.resolve_label_embeddings(
        model, tiny_tokenizer, sets[0], TEMPLATES[:1]
    )  # used again: now the newest
    pipeline_harmoclip.resolve_label_embeddings(
        model, tiny_tokenizer, sets[size], TEMPLATES[:1]
    )  # one more: drops sets[1]
    assert calls[0] == size + 1
    for labels in (sets[0], sets[2], sets[size - 1], sets[size]):  # all still cached
        pipeline_harmoclip.resolve_label_embeddings(model, tiny_tokenizer, labels, TEMPLATES[:1])
    assert calls[0] == size + 1
    pipeline_harmoclip.resolve_label_embeddings(
        model, tiny_tokenizer, sets[1], TEMPLATES[:1]
    )  # the least recently used
    assert calls[0] == size + 2
