"""A small, independent CLIP in OpenAI's module layout (as `clip/model.py` defines it), for conversion tests.

Its `state_dict()` has the real key layout of OpenAI CLIP and open_clip checkpoints (fused `attn.in_proj_weight`,
`visual.proj` and `text_projection` used as `x @ proj`), and its forward pass is the reference the converted
models are compared with. Written with `nn.MultiheadAttention` modules (unlike the converter's functional check),
scriptable with `torch.jit.script` to produce TorchScript archives.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        activation = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, mlp_width)), ("gelu", activation), ("c_proj", nn.Linear(mlp_width, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int, quick_gelu: bool
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, 4 * width, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # (B, grid**2, width)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class ReferenceCLIP(nn.Module):
    """OpenAI's ViT CLIP. `vision_width` and `text_width` should be multiples of 64 for OpenAI's head rule."""

    def __init__(
        self,
        embed_dim: int = 24,
        image_size: int = 32,
        patch_size: int = 8,
        vision_width: int = 128,
        vision_layers: int = 2,
        vision_heads: int = 2,
        context_length: int = 77,
        vocab_size: int = 2514,
        text_width: int = 64,
        text_layers: int = 2,
        text_heads: int = 1,
        quick_gelu: bool = True,
    ):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(
            image_size, patch_size, vision_width, vision_layers, vision_heads, embed_dim, quick_gelu
        )
        self.transformer = Transformer(text_width, text_layers, text_heads, 4 * text_width, quick_gelu)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(text_width**-0.5 * torch.randn(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self._randomise_norms()

    def _randomise_norms(self) -> None:
        """Non-trivial layer-norm affines and biases, so a swapped weight/bias or a missed transpose shows."""
        generator = torch.Generator().manual_seed(1)
        for name, parameter in self.named_parameters():
            if ".ln" in name or name.startswith("ln_") or name.endswith("bias"):
                with torch.no_grad():
                    parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))

    @torch.jit.export
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)

    @torch.jit.export
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        mask = torch.full((length, length), float("-inf")).triu(1)
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)] @ self.text_projection

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(pixel_values), self.encode_text(input_ids)
