"""Region classification computed from the definitions, independently of the model's region code and of
`pipeline_harmoclip`: the dense map written out layer by layer, the loop-based RoIAlign of `roi_reference`, and label
embeddings from the plain CLIP forward (`text_embeds`), ensembled by hand; phrase embeddings (lexemes and phrases alone) from
transformers' text tower by hand."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from roi_reference import slow_roi_align


def value_path_dense(
    model: torch.nn.Module, pixels: torch.Tensor, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D, h, w) unnormalised dense features: value path in the last layer, then CLIP's heads
    (h = H / patch, w = W / patch; a frame other than the config's needs `interpolate_pos_encoding`)."""
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=interpolate_pos_encoding))
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    last = vision.encoder.layers[-1]
    hidden = hidden + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
    hidden = hidden + last.mlp(last.layer_norm2(hidden))
    patches = model.visual_projection(vision.post_layernorm(hidden[:, 1:]))  # (B, h*w, D)
    patch = model.config.vision_config.patch_size
    return patches.reshape(pixels.shape[0], pixels.shape[2] // patch, pixels.shape[3] // patch, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def reference_regions(
    model: torch.nn.Module, pixels: torch.Tensor, boxes: torch.Tensor, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """(1, 3, H, W) pixels and (N, 4) xyxy boxes normalised to the frame -> (N, D) float64 region embeddings:
    RoIAlign 1x1 (aligned, adaptive sampling) on the patch grid, L2-normalised; every patch L2-normalised first
    where the config's `region_pooling` says so (a config without the setting pools the projected patches as they
    are)."""
    dense = value_path_dense(model, pixels, interpolate_pos_encoding).double()
    if getattr(model.config, "region_pooling", "pool_then_normalize") == "normalize_then_pool":
        dense = F.normalize(dense, dim=1)
    height, width = dense.shape[-2:]
    rois = torch.cat(
        [torch.zeros(len(boxes), 1, dtype=torch.float64), boxes.double() * torch.tensor([width, height] * 2)], dim=1
    )
    pooled = slow_roi_align(dense, rois, (1, 1), 1.0, -1, True)[:, :, 0, 0]
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def reference_label_embeds(
    model: torch.nn.Module, tokenizer, labels: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """(L, D) float64: each label's prompts through the CLIP forward's `text_embeds` (normalised), mean, renormalised."""
    rows = []
    for label in labels:
        tokens = tokenizer([template.format(label) for template in templates], padding=True, return_tensors="pt")
        dummy = torch.zeros(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
        text = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=dummy
        ).text_embeds
        rows.append(F.normalize(text.double().mean(dim=0), dim=0))
    return torch.stack(rows)


def reference_probabilities(model: torch.nn.Module, regions: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
    """(N, L) softmax over labels of the model's logit scale times the cosine."""
    return (float(model.logit_scale.detach().exp()) * regions @ label_embeds.t()).softmax(dim=-1)


@torch.no_grad()
def reference_phrases(model, tokenizer, caption: str, spans, mode: str) -> torch.Tensor:
    """(P, D) float64: "token": the caption's final token states (transformers' text tower) over the tokens whose
    offsets meet the span, averaged, projected, normalised; "alone": BOS + those tokens + EOS through the CLIP
    forward's `text_embeds`."""
    encoding = tokenizer([caption], return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding["offset_mapping"][0].tolist()
    states = model.text_model(input_ids=encoding["input_ids"]).last_hidden_state[0].double()
    rows = []
    for start, end in spans:
        tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if mode == "token":
            pooled = states[tokens].mean(dim=0)
            rows.append(F.normalize(pooled @ model.text_projection.weight.double().t(), dim=0))
        else:
            ids = encoding["input_ids"][0]
            alone = torch.cat([ids[:1], ids[tokens], ids[-1:]])[None]
            dummy = torch.zeros(1, 3, 32, 32)
            rows.append(F.normalize(model(input_ids=alone, pixel_values=dummy).text_embeds[0].double(), dim=0))
    return torch.stack(rows)
