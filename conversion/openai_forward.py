"""The source model's forward pass, straight from an OpenAI-layout state dict (OpenAI CLIP and open_clip).

The converter uses it to check that the converted model gives the same embeddings as the checkpoint it came from,
without the `clip` or `open_clip` packages. It follows OpenAI's `clip/model.py`: pre-LN residual blocks
(`x + attn(ln_1(x))`, `x + mlp(ln_2(x))`) with `nn.MultiheadAttention`'s fused projection, the class token and
`ln_post` then `@ proj` for images, a causal mask and the `<|endoftext|>` token (the highest id, found by argmax)
then `@ text_projection` for text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .openai_keys import ClipArchitecture

LAYER_NORM_EPS = 1e-5


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(f"unsupported activation {name!r} (expected 'quick_gelu' or 'gelu')")


def _layer_norm(x: torch.Tensor, weights: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weights[prefix + ".weight"], weights[prefix + ".bias"], LAYER_NORM_EPS)


def _transformer(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    prefix: str,
    layers: int,
    heads: int,
    act: str,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """(L, B, C) sequence-first, as OpenAI's `Transformer`."""
    width = x.shape[-1]
    for index in range(layers):
        block = f"{prefix}resblocks.{index}."
        h = _layer_norm(x, weights, block + "ln_1")
        h = F.multi_head_attention_forward(
            h,
            h,
            h,
            width,
            heads,
            weights[block + "attn.in_proj_weight"],
            weights[block + "attn.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            weights[block + "attn.out_proj.weight"],
            weights[block + "attn.out_proj.bias"],
            training=False,
            need_weights=False,
            attn_mask=attn_mask,
        )[0]
        x = x + h
        h = _layer_norm(x, weights, block + "ln_2")
        h = F.linear(h, weights[block + "mlp.c_fc.weight"], weights[block + "mlp.c_fc.bias"])
        h = F.linear(_activation(act, h), weights[block + "mlp.c_proj.weight"], weights[block + "mlp.c_proj.bias"])
        x = x + h
    return x


@torch.no_grad()
def encode_image(weights: dict[str, torch.Tensor], arch: ClipArchitecture, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, D) projected, unnormalised image embeddings."""
    x = F.conv2d(pixel_values, weights["visual.conv1.weight"], stride=arch.patch_size)
    x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
    cls = weights["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + weights["visual.positional_embedding"]
    x = _layer_norm(x, weights, "visual.ln_pre").transpose(0, 1)
    x = _transformer(x, weights, "visual.transformer.", arch.vision_layers, arch.vision_heads, arch.hidden_act, None)
    return _layer_norm(x[0], weights, "visual.ln_post") @ weights["visual.proj"]


@torch.no_grad()
def encode_text(weights: dict[str, torch.Tensor], arch: ClipArchitecture, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids (T <= context length, `<|endoftext|>` the highest id) -> (B, D) unnormalised embeddings."""
    length = input_ids.shape[1]
    x = weights["token_embedding.weight"][input_ids] + weights["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    x = _transformer(
        x.transpose(0, 1), weights, "transformer.", arch.text_layers, arch.text_heads, arch.hidden_act, causal
    )
    x = _layer_norm(x.transpose(0, 1), weights, "ln_final")
    end = input_ids.argmax(dim=-1)
    return x[torch.arange(x.shape[0]), end] @ weights["text_projection"]


__all__ = ["encode_image", "encode_text"]
