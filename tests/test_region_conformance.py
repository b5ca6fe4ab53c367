"""What HarmoCLIP adds to CLIP (dense features, region features, the detection output) held to the checks transformers'
`ModelTesterMixin` makes of CLIP's outputs: identical after save/load, close in float16 and bfloat16 and under eager
against SDPA attention (transformers' tolerances), the same in a batch as alone, and the same through `torch.export`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_harmoclip_model
from modeling_harmoclip import HarmoCLIPModel

# transformers' eager-vs-SDPA tolerances on the CPU (`test_modeling_common._test_eager_matches_sdpa_inference`)
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}
RTOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}
# Against float32, a half-precision model drifts more than eager from SDPA in one dtype; these bound the drift of
# unit-length embeddings (measured for the tiny model: 7e-3 in bfloat16, 1e-3 in float16), with room.
HALF_VS_FLOAT = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, 4, 2, generator=generator) * 0.6
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(batch, 4, 2, generator=generator) * 0.3], dim=-1)
    box_mask = torch.ones(batch, 4, dtype=torch.bool)
    box_mask[-1, 2:] = False
    labels = F.normalize(torch.randn(3, 16, generator=generator), dim=-1)
    background = F.normalize(torch.randn(16, generator=generator), dim=-1)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    return dict(pixel_values=pixel_values, boxes=boxes, box_mask=box_mask, labels=labels, background=background)


@torch.no_grad()
def _outputs(model: HarmoCLIPModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense map, region embeddings, and the detection output on the user's boxes and on the model's proposals."""
    pixels = inputs["pixel_values"].to(model.dtype)
    regions, dense = model.get_region_and_dense_features(pixels, inputs["boxes"], inputs["box_mask"])
    mine = model.detect(pixels, inputs["labels"], inputs["background"], inputs["boxes"], inputs["box_mask"])
    return {
        "dense": dense.float(),
        "regions": regions,
        "region_features": model.get_region_features(pixels, inputs["boxes"], inputs["box_mask"]),
        "dense_features": model.get_dense_features(pixels).float(),
        "detection_scores": mine.scores,
        "dense_probabilities": mine.dense_probabilities,
        "forward_regions": model(
            input_ids=torch.tensor([[49406, 320, 49407]]).clamp(max=model.config.text_config.vocab_size - 1),
            pixel_values=pixels,
            boxes=inputs["boxes"],
            box_mask=inputs["box_mask"],
        ).region_embeds,
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("region_conformance") / "model"
    tiny_harmoclip_model(seed=4).save_pretrained(path)
    return path


def test_save_load_gives_identical_region_dense_and_detection_outputs(folder: Path, tmp_path: Path) -> None:
    """As `test_save_load`: the reloaded model's outputs equal the saved one's, also after a second round trip."""
    original = tiny_harmoclip_model(seed=4)
    reloaded = HarmoCLIPModel.from_pretrained(folder).eval()
    reloaded.save_pretrained(tmp_path / "again")
    twice = HarmoCLIPModel.from_pretrained(tmp_path / "again").eval()
    inputs = _inputs()
    expected = _outputs(original, inputs)
    proposals = original.detect(inputs["pixel_values"], inputs["labels"], inputs["background"])
    for model in (reloaded, twice):
        for key, value in _outputs(model, inputs).items():
            assert torch.equal(value, expected[key]), key
        found = model.detect(inputs["pixel_values"], inputs["labels"], inputs["background"])
        assert torch.equal(found.pred_boxes, proposals.pred_boxes) and torch.equal(found.scores, proposals.scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_eager_matches_sdpa(folder: Path, dtype: torch.dtype) -> None:
    """As `test_eager_matches_sdpa_inference`: both attention implementations, loaded in the same dtype, agree."""
    eager = HarmoCLIPModel.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
    sdpa = HarmoCLIPModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
    assert eager.vision_model.config._attn_implementation == "eager"
    assert sdpa.vision_model.config._attn_implementation == "sdpa"
    inputs = _inputs()
    expected, actual = _outputs(eager, inputs), _outputs(sdpa, inputs)
    for key in ("dense", "regions", "region_features", "dense_features", "forward_regions"):
        torch.testing.assert_close(actual[key], expected[key], atol=ATOL[dtype], rtol=RTOL[dtype], msg=key)
    scale = eager.logit_scale.exp().item()  # probabilities move by about the logit error, scale x cosine error
    for key in ("detection_scores", "dense_probabilities"):
        torch.testing.assert_close(actual[key], expected[key], atol=scale * ATOL[dtype] * 4, rtol=0, msg=key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_float32(folder: Path, dtype: torch.dtype) -> None:
    """`from_pretrained(dtype=...)`: region and dense embeddings stay float32 unit vectors close to float32's."""
    full = HarmoCLIPModel.from_pretrained(folder).eval()
    half = HarmoCLIPModel.from_pretrained(folder, dtype=dtype).eval()
    assert half.dtype == dtype
    inputs = _inputs()
    expected, actual = _outputs(full, inputs), _outputs(half, inputs)
    assert actual["regions"].dtype == torch.float32
    valid = inputs["box_mask"]
    assert torch.allclose(actual["regions"][valid].norm(dim=-1), torch.ones(int(valid.sum())), atol=1e-5)
    for key in ("dense", "regions", "region_features", "forward_regions"):
        assert (actual[key] - expected[key]).abs().max() <= HALF_VS_FLOAT[dtype], key
    for key in ("detection_scores", "dense_probabilities"):  # about the logit error, scale x cosine error
        assert (actual[key] - expected[key]).abs().max() <= full.logit_scale.exp().item() * HALF_VS_FLOAT[dtype], key
    assert torch.equal(actual["regions"][~valid], torch.zeros_like(actual["regions"][~valid]))


def test_batching_equivalence(folder: Path) -> None:
    """As `test_batching_equivalence`: each image of a batch gives what it gives alone (masked box slots included)."""
    model = HarmoCLIPModel.from_pretrained(folder).eval()
    inputs = _inputs(batch=3)
    batched = _outputs(model, inputs)
    for index in range(3):
        alone = {
            key: value[index : index + 1] if key in ("pixel_values", "boxes", "box_mask") else value
            for key, value in inputs.items()
        }
        single = _outputs(model, alone)
        for key in ("dense", "regions", "region_features", "dense_features", "detection_scores", "dense_probabilities"):
            torch.testing.assert_close(single[key][0], batched[key][index], atol=1e-5, rtol=1e-5, msg=key)


class _RegionGraph(torch.nn.Module):
    def __init__(self, model: HarmoCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, boxes, box_mask):
        return self.model.get_region_and_dense_features(pixel_values, boxes, box_mask)


def test_torch_export_of_region_and_dense_features(folder: Path) -> None:
    """As the export tester's dynamo path: the exported program computes what eager does, also for another batch and
    number of boxes than it was traced with (dynamic dimensions)."""
    model = HarmoCLIPModel.from_pretrained(folder).eval()
    inputs = _inputs(batch=2)
    batch, boxes = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("boxes", min=1, max=64)
    program = torch.export.export(
        _RegionGraph(model),
        (inputs["pixel_values"], inputs["boxes"], inputs["box_mask"]),
        dynamic_shapes=({0: batch}, {0: batch, 1: boxes}, {0: batch, 1: boxes}),
        strict=False,
    )
    other = _inputs(batch=3, seed=5)
    other["boxes"], other["box_mask"] = other["boxes"][:, :3], other["box_mask"][:, :3]
    for case in (inputs, other):
        args = (case["pixel_values"], case["boxes"], case["box_mask"])
        with torch.no_grad():
            exported, eager = program.module()(*args), model.get_region_and_dense_features(*args)
        for got, want in zip(exported, eager):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
