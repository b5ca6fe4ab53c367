"""OpenAI CLIP / open_clip state-dict layout: hyper-parameters from the weights, and the key map to `CLIPModel`.

OpenAI's `clip/model.py` and open_clip's `CLIP` (non-custom text tower) share one layout:

    visual.conv1.weight (C_v, 3, P, P)            visual.class_embedding (C_v,)
    visual.positional_embedding (1 + g*g, C_v)    visual.ln_pre.{weight,bias}
    visual.transformer.resblocks.{i}.attn.in_proj_{weight,bias} (3*C, C) / (3*C,)   fused q, k, v
    visual.transformer.resblocks.{i}.attn.out_proj.{weight,bias}
    visual.transformer.resblocks.{i}.{ln_1,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}
    visual.ln_post.{weight,bias}                  visual.proj (C_v, D)          used as `x @ proj`
    token_embedding.weight (V, C_t)               positional_embedding (T, C_t)
    transformer.resblocks.{i}.* (as above)        ln_final.{weight,bias}
    text_projection (C_t, D)                      logit_scale ()

transformers' `CLIPModel` stores the projections as `nn.Linear` weights (D, C), i.e. transposed, and q, k, v apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import CLIPConfig

# Entries of OpenAI's TorchScript archives and of open_clip's modules that are not weights.
NON_WEIGHT_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
OPENAI_HEAD_WIDTH = 64  # OpenAI's loader: heads = width // 64 for both towers

_BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


@dataclass(frozen=True)
class ClipArchitecture:
    """The hyper-parameters of a ViT CLIP in OpenAI's layout (widths C, MLP widths, layers, heads)."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_width: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_width: int
    hidden_act: str  # "quick_gelu" (OpenAI) or "gelu"


def _require(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"state dict: missing key {key!r} (not an OpenAI/open_clip ViT CLIP layout)")
    return state_dict[key]


def count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks `{prefix}resblocks.{i}.` (checked to be numbered 0..n-1)."""
    pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    if indices != set(range(len(indices))):
        raise ValueError(f"state dict: blocks under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def infer_architecture(
    state_dict: dict[str, torch.Tensor],
    hidden_act: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> ClipArchitecture:
    """Hyper-parameters from the weight shapes, as OpenAI's `build_model` infers them.

    Heads default to width // 64 (OpenAI's rule); open_clip's config gives them explicitly.
    """
    if "visual.proj" not in state_dict:
        if any(key.startswith("visual.layer1.") for key in state_dict):
            raise ValueError("state dict: ResNet CLIP image towers are not supported (no CLIPModel equivalent)")
        _require(state_dict, "visual.proj")
    conv = _require(state_dict, "visual.conv1.weight")
    vision_width, _, patch_size, _ = conv.shape
    num_positions = _require(state_dict, "visual.positional_embedding").shape[0]
    grid = round((num_positions - 1) ** 0.5)
    if grid * grid + 1 != num_positions:
        raise ValueError(f"state dict: visual.positional_embedding has {num_positions} rows, not 1 + a square grid")
    text_width = _require(state_dict, "ln_final.weight").shape[0]
    vision_heads = vision_heads if vision_heads is not None else vision_width // OPENAI_HEAD_WIDTH
    text_heads = text_heads if text_heads is not None else text_width // OPENAI_HEAD_WIDTH
    for name, heads, width in (("vision", vision_heads, vision_width), ("text", text_heads, text_width)):
        if heads < 1 or width % heads:
            raise ValueError(f"{name} tower: width {width} cannot be split into {heads} attention heads")
    return ClipArchitecture(
        embed_dim=_require(state_dict, "text_projection").shape[1],
        image_size=patch_size * grid,
        patch_size=patch_size,
        vision_width=vision_width,
        vision_layers=count_blocks(state_dict, "visual.transformer."),
        vision_heads=vision_heads,
        vision_mlp_width=_require(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        context_length=_require(state_dict, "positional_embedding").shape[0],
        vocab_size=_require(state_dict, "token_embedding.weight").shape[0],
        text_width=text_width,
        text_layers=count_blocks(state_dict, "transformer."),
        text_heads=text_heads,
        text_mlp_width=_require(state_dict, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        hidden_act=hidden_act,
    )


def clip_config_from_architecture(arch: ClipArchitecture, logit_scale: float) -> CLIPConfig:
    """The transformers `CLIPConfig` of the same model. Token ids follow OpenAI's vocabulary: the last two ids are
    `<|startoftext|>` and `<|endoftext|>`; the tokenizer pads with `<|endoftext|>`."""
    bos, eos = arch.vocab_size - 2, arch.vocab_size - 1
    return CLIPConfig(
        text_config=dict(
            vocab_size=arch.vocab_size,
            hidden_size=arch.text_width,
            intermediate_size=arch.text_mlp_width,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=arch.context_length,
            hidden_act=arch.hidden_act,
            projection_dim=arch.embed_dim,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=arch.vision_width,
            intermediate_size=arch.vision_mlp_width,
            num_hidden_layers=arch.vision_layers,
            num_attention_heads=arch.vision_heads,
            image_size=arch.image_size,
            patch_size=arch.patch_size,
            hidden_act=arch.hidden_act,
            projection_dim=arch.embed_dim,
        ),
        projection_dim=arch.embed_dim,
        logit_scale_init_value=float(logit_scale),
    )


def _map_blocks(source: str, target: str, num_layers: int) -> dict[str, str]:
    mapping = {}
    for index in range(num_layers):
        for part, hf_part in _BLOCK_PARTS.items():
            for tensor in ("weight", "bias"):
                mapping[f"{source}resblocks.{index}.{part}.{tensor}"] = f"{target}layers.{index}.{hf_part}.{tensor}"
    return mapping


def openai_to_hf_key_map(vision_layers: int, text_layers: int) -> dict[str, str]:
    """OpenAI key -> `CLIPModel` key, for every tensor copied as is (fused attention and projections apart)."""
    mapping = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "logit_scale": "logit_scale",
    }
    for source, target in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        for tensor in ("weight", "bias"):
            mapping[f"{source}.{tensor}"] = f"{target}.{tensor}"
    mapping.update(_map_blocks("visual.transformer.", "vision_model.encoder.", vision_layers))
    mapping.update(_map_blocks("transformer.", "text_model.encoder.", text_layers))
    return mapping


def openai_to_hf_state_dict(state_dict: dict[str, torch.Tensor], arch: ClipArchitecture) -> dict[str, torch.Tensor]:
    """Renames, splits and transposes an OpenAI-layout state dict into `CLIPModel`'s, as float32.

    Every source tensor must be used: a leftover key (e.g. open_clip's layer scale `ls_1.gamma` or an attention
    pooler) means a model CLIPModel cannot represent, and raises `ValueError` naming the keys.
    """
    weights = {key: value for key, value in state_dict.items() if key not in NON_WEIGHT_KEYS}
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _require(weights, key).detach().to(torch.float32)

    for source, target in openai_to_hf_key_map(arch.vision_layers, arch.text_layers).items():
        converted[target] = take(source).clone()
    converted["visual_projection.weight"] = take("visual.proj").t().contiguous()
    converted["text_projection.weight"] = take("text_projection").t().contiguous()
    for source, target, layers in (
        ("visual.transformer.", "vision_model.encoder.", arch.vision_layers),
        ("transformer.", "text_model.encoder.", arch.text_layers),
    ):
        for index in range(layers):
            fused = f"{source}resblocks.{index}.attn.in_proj_"
            attention = f"{target}layers.{index}.self_attn."
            for tensor in ("weight", "bias"):
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), take(fused + tensor).chunk(3, dim=0)):
                    converted[f"{attention}{name}.{tensor}"] = chunk.contiguous()
    leftover = sorted(set(weights) - used)
    if leftover:
        shown = ", ".join(leftover[:8]) + (" ..." if len(leftover) > 8 else "")
        raise ValueError(f"state dict: {len(leftover)} tensors have no CLIPModel equivalent: {shown}")
    return converted


__all__ = [
    "ClipArchitecture",
    "infer_architecture",
    "clip_config_from_architecture",
    "openai_to_hf_key_map",
    "openai_to_hf_state_dict",
    "count_blocks",
    "NON_WEIGHT_KEYS",
]
