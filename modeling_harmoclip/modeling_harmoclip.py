"""HarmoCLIP: a CLIP whose image encoder also gives region (box) embeddings aligned with caption phrases.

The global towers are transformers' `CLIPModel`, inherited unchanged: parameter names, `get_text_features`,
`get_image_features` and the text+image `forward` behave exactly like CLIP's, so CLIP checkpoints load by identity
and a HarmoCLIP checkpoint's towers load into a plain `CLIPModel`. On top of it:

- dense features: the vision trunk up to the last layer, then the last layer with attention replaced by its value
  path (CLIPSelf / FineCLIP), `post_layernorm` and `visual_projection` on every patch;
- region embeddings: RoIAlign (1x1, aligned, adaptive sampling) at each box of the dense map, its patch vectors
  L2-normalised first by default (CLIPSelf / FineCLIP), then L2-normalised;
- lexeme embeddings: mean of the caption's final token states over a phrase's tokens, projected, L2-normalised;
- phrase embeddings: each phrase encoded alone through the whole text tower, end-of-text pooled (sentence level);
- the losses GC, LRC, RLA and GR (see `losses.py`), weighted by the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils import can_return_tuple

from .box_ops import check_boxes
from .configuration_harmoclip import HarmoCLIPConfig, loss_weights
from .losses import harmoclip_loss
from .roi_align import roi_align_per_image

# Crops are encoded in chunks of this many to bound activation memory whatever the number of boxes.
CROP_CHUNK_SIZE = 64


@dataclass
class HarmoCLIPOutput(CLIPOutput):
    r"""
    CLIP's output (`loss`, `logits_per_image` (B_img, B_txt), `logits_per_text`, `text_embeds` (B_txt, D),
    `image_embeds` (B_img, D), `text_model_output`, `vision_model_output`) plus:

    region_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised region embeddings of the boxes, float32; rows of masked boxes are zeros.
    lexeme_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised phrase embeddings aligned with the boxes; rows of boxes without a phrase are zeros.
    phrase_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised sentence-level embeddings of each box's phrase encoded alone (computed when RLA is on); rows of
        boxes without a phrase are zeros.
    region_mask (`torch.BoolTensor` of shape `(B, N)`, *optional*): which boxes were valid.
    linked_mask (`torch.BoolTensor` of shape `(B, N)`, *optional*): which valid boxes have a phrase.
    loss_gc, loss_lrc, loss_rla, loss_gr (`torch.FloatTensor` scalars, *optional*):
        The unweighted loss terms, `None` where a term does not apply; `loss` is their weighted sum.
    """

    region_embeds: torch.Tensor | None = None
    lexeme_embeds: torch.Tensor | None = None
    phrase_embeds: torch.Tensor | None = None
    region_mask: torch.Tensor | None = None
    linked_mask: torch.Tensor | None = None
    loss_gc: torch.Tensor | None = None
    loss_lrc: torch.Tensor | None = None
    loss_rla: torch.Tensor | None = None
    loss_gr: torch.Tensor | None = None


def value_path_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer with attention replaced by its value path (CLIPSelf / FineCLIP's dense features):
    (B, L, C) -> (B, L, C), ``x + out_proj(v_proj(ln1(x)))`` then the MLP with its residual."""
    attention = layer.self_attn
    hidden = hidden + attention.out_proj(attention.v_proj(layer.layer_norm1(hidden)))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeds, dim=-1, eps=1e-12)


class HarmoCLIPModel(CLIPModel):
    """CLIP with region and lexeme embeddings. Parameter names are `CLIPModel`'s plus `region_logit_scale`."""

    config_class = HarmoCLIPConfig
    config: HarmoCLIPConfig

    def __init__(self, config: HarmoCLIPConfig):
        super().__init__(config)
        # Log temperature of the lexeme-region contrast in "from_global" / "separate" mode. It exists in every mode
        # (unused when "shared") so that a checkpoint's parameters do not depend on the mode.
        self.region_logit_scale = nn.Parameter(self.region_logit_scale_start())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # CLIPModel.__init__ already runs post_init once, before `region_logit_scale` exists.
        if isinstance(module, HarmoCLIPModel) and hasattr(module, "region_logit_scale"):
            # `init.*` skips tensors loaded from a checkpoint, so this only fills what a CLIP checkpoint lacks; it runs
            # after the checkpoint's `logit_scale` is loaded, so "from_global" starts from the CLIP's trained value.
            init.copy_(module.region_logit_scale, module.region_logit_scale_start())

    def region_logit_scale_start(self) -> torch.Tensor:
        """The starting value of `region_logit_scale` (scalar): `config.region_logit_scale_init_value` in "separate"
        mode, the global `logit_scale` otherwise (a CLIP's trained one, or `logit_scale_init_value` from scratch)."""
        if self.config.region_logit_scale_mode == "separate":
            return torch.full_like(self.logit_scale, float(self.config.region_logit_scale_init_value)).detach()
        return self.logit_scale.detach().clone()

    def reset_region_logit_scale(self) -> None:
        """Sets `region_logit_scale` to its starting value; for weights loaded by hand (`load_state_dict`) from a
        CLIP, which `from_pretrained` would have initialised already."""
        with torch.no_grad():
            self.region_logit_scale.copy_(self.region_logit_scale_start())

    @property
    def lrc_rla_logit_scale(self) -> nn.Parameter:
        """The learnable log temperature of the LRC and RLA losses: `logit_scale` when `region_logit_scale_mode` is
        "shared" (as FineCLIP's region contrast), `region_logit_scale` otherwise."""
        return self.logit_scale if self.config.region_logit_scale_mode == "shared" else self.region_logit_scale

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # `register_for_auto_class` keeps one auto class per Python class: add the zero-shot head by hand.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoModelForZeroShotImageClassification"] = (
            f"{self.__class__.__module__.split('.')[-1]}.{self.__class__.__name__}"
        )
        self.config.auto_map = auto_map
        # The region-classification, detection and segmentation pipelines ship with the model: their config entries,
        # and their files beside the code.
        from .pipeline_detection import ZeroShotRegionDetectionPipeline, detection_pipelines_entry
        from .pipeline_harmoclip import RegionClassificationPipeline, custom_pipelines_entry

        self.config.custom_pipelines = custom_pipelines_entry() | detection_pipelines_entry()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for pipeline_class in (RegionClassificationPipeline, ZeroShotRegionDetectionPipeline):
            custom_object_save(pipeline_class, save_directory)
        return result

    # ------------------------------------------------------------------ vision: trunk, dense map, regions

    def _vision_trunk(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + h*w, C) hidden states entering the last vision layer."""
        vision = self.vision_model
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden = vision.pre_layrnorm(hidden)
        for layer in vision.encoder.layers[:-1]:
            hidden = layer(hidden, None)
        return hidden

    def _dense_from_trunk(self, hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Trunk states (B, 1 + h*w, C) -> (B, D, h, w) projected, unnormalised patch features."""
        layer = self.vision_model.encoder.layers[-1]
        if self.config.dense_mode == "value":
            if getattr(layer, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
                # Gradient checkpointing is on: the value path is recomputed in the backward pass like the layers.
                hidden = layer._gradient_checkpointing_func(partial(value_path_layer, layer), hidden)
            else:
                hidden = value_path_layer(layer, hidden)
        else:
            hidden = layer(hidden, None)
        patches = self.visual_projection(self.vision_model.post_layernorm(hidden[:, 1:]))
        batch, _, dim = patches.shape
        return patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])

    def _patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        patch = self.config.vision_config.patch_size
        return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch

    def get_dense_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H/patch, W/patch) patch embeddings in the joint space, L2-normalised per location."""
        dense = self._dense_from_trunk(
            self._vision_trunk(pixel_values, interpolate_pos_encoding), self._patch_grid(pixel_values)
        )
        return F.normalize(dense, dim=1, eps=1e-12)

    def _pool_regions(self, dense: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        """RoIAlign (1x1) of the dense map (B, D, h, w) at normalised xyxy boxes (B, N, 4) -> (B, N, D), normalised.

        With `region_pooling="normalize_then_pool"` every patch vector is L2-normalised before pooling, so that a few
        high-norm patch tokens do not dominate a box. Every box of every image in two batched matrix products; masked
        boxes (which may hold anything) are pooled at a placeholder box and their rows zeroed."""
        height, width = dense.shape[-2:]
        scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
        placeholder = boxes.new_tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float32)
        boxes = torch.where(box_mask[..., None], boxes.float(), placeholder) * scale
        dense = dense.float()
        if self.config.region_pooling == "normalize_then_pool":
            dense = F.normalize(dense, dim=1, eps=1e-12)
        pooled = roi_align_per_image(dense, boxes, output_size=1, sampling_ratio=-1, aligned=True)
        regions = _normalize(pooled.flatten(2))  # (B, N, D)
        return regions * box_mask[..., None].to(regions.dtype)

    def get_region_features(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Region embeddings from one pass of the image encoder, whatever the number of boxes.

        Args:
            pixel_values: (B, 3, H, W).
            boxes: (B, N, 4) xyxy, normalised to [0, 1] in the frame of `pixel_values` (as the processor returns).
            box_mask: (B, N) bool, True for real boxes; default all True.
        Returns:
            (B, N, D) float32, L2-normalised; rows of masked boxes are zeros.
        """
        box_mask = check_boxes(boxes, box_mask)
        dense = self._dense_from_trunk(
            self._vision_trunk(pixel_values, interpolate_pos_encoding), self._patch_grid(pixel_values)
        )
        return self._pool_regions(dense, boxes, box_mask)

    def get_region_and_dense_features(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`get_region_features` and `get_dense_features` from one pass of the image encoder (what the exported
        region graph computes).

        Returns:
            region_embeds (B, N, D) float32, L2-normalised, zeros for masked boxes; dense (B, D, H/patch, W/patch)
            L2-normalised per location.
        """
        box_mask = check_boxes(boxes, box_mask)
        dense = self._dense_from_trunk(
            self._vision_trunk(pixel_values, interpolate_pos_encoding), self._patch_grid(pixel_values)
        )
        return self._pool_regions(dense, boxes, box_mask), F.normalize(dense, dim=1, eps=1e-12)

    def compiled_region_features(self, **compile_options: Any) -> Callable[..., torch.Tensor]:
        """`get_region_features` under `torch.compile(**compile_options)` (one graph, no graph break), with the box
        value checks of `check_boxes` run eagerly before the compiled part.

        A new number of boxes or images recompiles once (or pass `dynamic=True`). Returns a callable
        ``(pixel_values (B, 3, H, W), boxes (B, N, 4), box_mask (B, N) | None) -> (B, N, D)``.
        """
        compiled = torch.compile(self.get_region_features, **compile_options)

        def region_features(
            pixel_values: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            return compiled(pixel_values, boxes, check_boxes(boxes, box_mask))

        return region_features

    def get_crop_features(
        self,
        crop_pixel_values: torch.Tensor,
        crop_mask: torch.Tensor | None = None,
        chunk_size: int = CROP_CHUNK_SIZE,
    ) -> torch.Tensor:
        """Global embedding of each box's crop: the teacher signal of GR, and the crop-and-encode way a plain CLIP
        embeds regions.

        The crops are the processor's (`processor(images, boxes=..., return_crops=True, crop_scale=...)`): each box,
        enlarged about its centre, cut from the original image and resized to the model's input size. They are encoded
        by `get_image_features`, `chunk_size` at a time; gradients flow unless the caller turns them off.

        Args:
            crop_pixel_values: (B, N, 3, S, S) normalised crops.
            crop_mask: (B, N) bool, True where a crop was cut; default all True.
            chunk_size: crops per call of the image encoder (bounds activation memory whatever N).
        Returns:
            (B, N, D) float32, L2-normalised; rows of masked crops are zeros.
        """
        if not isinstance(crop_pixel_values, torch.Tensor) or crop_pixel_values.dim() != 5:
            shape = (
                tuple(crop_pixel_values.shape)
                if isinstance(crop_pixel_values, torch.Tensor)
                else type(crop_pixel_values).__name__
            )
            raise ValueError(f"`crop_pixel_values` must have shape (B, N, 3, S, S), got {shape}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}")
        batch, num_boxes = crop_pixel_values.shape[:2]
        if crop_mask is None:
            crop_mask = torch.ones(batch, num_boxes, dtype=torch.bool, device=crop_pixel_values.device)
        elif not isinstance(crop_mask, torch.Tensor) or tuple(crop_mask.shape) != (batch, num_boxes):
            shape = tuple(crop_mask.shape) if isinstance(crop_mask, torch.Tensor) else type(crop_mask).__name__
            raise ValueError(
                f"`crop_mask` must have shape {(batch, num_boxes)} to match `crop_pixel_values`, got {shape}"
            )
        crops = crop_pixel_values.flatten(0, 1)
        valid_index = crop_mask.to(device=crops.device, dtype=torch.bool).reshape(-1).nonzero(as_tuple=True)[0]
        embeds = crops.new_zeros(batch * num_boxes, self.config.projection_dim, dtype=torch.float32)
        for chunk in valid_index.split(chunk_size):
            crop_embeds = self.get_image_features(pixel_values=crops[chunk]).pooler_output
            embeds = embeds.index_copy(0, chunk, _normalize(crop_embeds.float()))
        return embeds.reshape(batch, num_boxes, -1)

    # ------------------------------------------------------------------ text: lexemes

    def _lexemes_from_states(self, token_states: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """Mean of final token states (B, T, C) over each phrase's tokens (B, N, T) -> (B, N, D) normalised."""
        weights = phrase_token_mask.to(token_states.dtype)
        counts = weights.sum(-1, keepdim=True)
        pooled = weights @ token_states / counts.clamp(min=1)
        lexemes = _normalize(self.text_projection(pooled).float())
        return lexemes * (counts > 0).to(lexemes.dtype)

    def _lexemes_separate(self, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """Each phrase encoded as its own text: BOS + the phrase's caption tokens + EOS -> (B, N, D) normalised."""
        batch, num_phrases, _ = phrase_token_mask.shape
        linked = phrase_token_mask.any(-1).reshape(-1)
        lexemes = torch.zeros(batch * num_phrases, self.config.projection_dim, device=input_ids.device)
        if not linked.any():
            return lexemes.reshape(batch, num_phrases, -1)
        eos = self.config.text_config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        masks = phrase_token_mask.reshape(-1, phrase_token_mask.shape[-1])[linked]
        captions = input_ids.repeat_interleave(num_phrases, dim=0)[linked]
        sequences = [
            torch.cat([caption[:1], caption[mask], caption.new_tensor([eos])]) for caption, mask in zip(captions, masks)
        ]
        longest = max(len(sequence) for sequence in sequences)
        ids = input_ids.new_zeros(len(sequences), longest)
        attention = torch.zeros_like(ids)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            attention[row, : len(sequence)] = 1
        embeds = self.get_text_features(input_ids=ids, attention_mask=attention).pooler_output
        lexemes = lexemes.index_copy(0, linked.nonzero(as_tuple=True)[0], _normalize(embeds.float()))
        return lexemes.reshape(batch, num_phrases, -1)

    def get_lexeme_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, phrase_token_mask: torch.Tensor
    ) -> torch.Tensor:
        """Phrase ("lexeme") embeddings in the joint space.

        Args:
            input_ids, attention_mask: (B, T) captions, one per image.
            phrase_token_mask: (B, N, T) bool, the caption tokens of each box's phrase (a row of zeros: no phrase).
        Returns:
            (B, N, D) float32, L2-normalised; rows without tokens are zeros. In `"token"` mode the caption is encoded
            once and the phrase's final (layer-normed) token states are mean-pooled, then projected; in
            `"separate"` mode each phrase is encoded as its own text.
        """
        check_phrase_token_mask(phrase_token_mask, input_ids)
        phrase_token_mask = phrase_token_mask.to(device=input_ids.device, dtype=torch.bool)
        if self.config.lexeme_mode == "separate":
            return self._lexemes_separate(input_ids, phrase_token_mask)
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._lexemes_from_states(states, phrase_token_mask)

    def get_phrase_features(self, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """Sentence-level phrase embeddings: each phrase encoded as its own text (BOS + its caption tokens + EOS)
        through the whole text tower, end-of-text pooled, projected; whatever `lexeme_mode` is.

        Args:
            input_ids: (B, T) captions, one per image; phrase_token_mask: (B, N, T) bool, each box's phrase tokens.
        Returns:
            (B, N, D) float32, L2-normalised; rows without tokens are zeros.
        """
        check_phrase_token_mask(phrase_token_mask, input_ids)
        return self._lexemes_separate(input_ids, phrase_token_mask.to(device=input_ids.device, dtype=torch.bool))

    # ------------------------------------------------------------------ forward

    def _image_features_and_trunk(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **kwargs: Any
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """`get_image_features` exactly as CLIP gives it (hidden states and attentions as asked) and, captured on the
        way, the hidden states (B, 1 + h*w, C) entering the last vision layer: the one trunk pass that the global
        embedding and the dense map share."""
        captured: list[torch.Tensor] = []

        def keep_first_input(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not captured:  # a gradient-checkpointing recomputation calls the layer again
                captured.append(args[0])

        hook = self.vision_model.encoder.layers[-1].register_forward_pre_hook(keep_first_input)
        try:
            outputs = self.get_image_features(
                pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
            )
        finally:
            hook.remove()
        return outputs, captured[0]

    def _check_region_inputs(
        self,
        input_ids: torch.Tensor,
        boxes: torch.Tensor | None,
        box_mask: torch.Tensor | None,
        phrase_token_mask: torch.Tensor | None,
        phrase_ids: torch.Tensor | None,
        category_ids: torch.Tensor | None,
        teacher_region_embeds: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Checks the region inputs of `forward` against each other; returns the (B, N) valid boxes, the (B, N) boxes
        linked to a phrase and the (B, N, T) bool phrase token mask on the text's device (None where not given)."""
        region_mask = check_boxes(boxes, box_mask) if boxes is not None else None
        linked_mask = None
        if phrase_token_mask is not None:
            if boxes is None:
                raise ValueError("`phrase_token_mask` was given without `boxes`")
            check_phrase_token_mask(phrase_token_mask, input_ids, boxes.shape[:2])
            phrase_token_mask = phrase_token_mask.to(device=input_ids.device, dtype=torch.bool)
            linked_mask = region_mask & phrase_token_mask.any(-1)
            if phrase_ids is not None:
                if not isinstance(phrase_ids, torch.Tensor) or tuple(phrase_ids.shape) != tuple(boxes.shape[:2]):
                    shape = (
                        tuple(phrase_ids.shape) if isinstance(phrase_ids, torch.Tensor) else type(phrase_ids).__name__
                    )
                    raise ValueError(f"`phrase_ids` must have shape {tuple(boxes.shape[:2])}, got {shape}")
                needs_tokens = region_mask & (phrase_ids >= 0)
                empty = needs_tokens & ~phrase_token_mask.any(-1)
                if empty.any():
                    b, n = empty.nonzero()[0].tolist()
                    raise ValueError(
                        f"`phrase_token_mask`[{b}, {n}] has no token set, but box ({b}, {n}) is valid and has phrase id "
                        f"{int(phrase_ids[b, n])}"
                    )
                linked_mask = needs_tokens
        if category_ids is not None:
            if (
                boxes is None
                or not isinstance(category_ids, torch.Tensor)
                or tuple(category_ids.shape) != tuple(boxes.shape[:2])
            ):
                expected = tuple(boxes.shape[:2]) if boxes is not None else "(B, N) with `boxes`"
                shape = (
                    tuple(category_ids.shape) if isinstance(category_ids, torch.Tensor) else type(category_ids).__name__
                )
                raise ValueError(f"`category_ids` must have shape {expected}, got {shape}")
        if teacher_region_embeds is not None:
            if boxes is None:
                raise ValueError("`teacher_region_embeds` was given without `boxes`")
            expected = (*boxes.shape[:2], self.config.projection_dim)
            if tuple(teacher_region_embeds.shape) != expected:
                raise ValueError(
                    f"`teacher_region_embeds` must have shape {expected}, got {tuple(teacher_region_embeds.shape)}"
                )
        return region_mask, linked_mask, phrase_token_mask

    def _phrase_embeddings(
        self, input_ids: torch.Tensor, caption_states: torch.Tensor, linked_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) lexeme embeddings (LRC's texts: token states of the caption, or the phrases encoded alone in
        "separate" lexeme mode) and, when RLA is weighted, (B, N, D) phrase embeddings (each phrase encoded alone).

        Without `region_text_grad` both are constants to the loss: GC alone then trains the text tower."""
        text_grad = self.config.region_text_grad and torch.is_grad_enabled()
        phrase_embeds = None
        if self.config.lexeme_mode == "separate" or self.config.loss_rla_weight > 0:
            with torch.set_grad_enabled(text_grad):
                phrase_embeds = self._lexemes_separate(input_ids, linked_tokens)
        if self.config.lexeme_mode == "separate":
            lexeme_embeds = phrase_embeds
        else:
            lexeme_embeds = self._lexemes_from_states(caption_states, linked_tokens)
            lexeme_embeds = lexeme_embeds if text_grad else lexeme_embeds.detach()
        return lexeme_embeds, phrase_embeds if self.config.loss_rla_weight > 0 else None

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
        phrase_ids: torch.Tensor | None = None,
        teacher_region_embeds: torch.Tensor | None = None,
        category_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> HarmoCLIPOutput | tuple:
        r"""
        With only `input_ids` and `pixel_values` this is `CLIPModel.forward`, `return_dict=False` (a tuple),
        `output_hidden_states` and `output_attentions` included; with boxes, CLIP's fields are unchanged and complete
        too. Additionally:

        boxes (`(B, N, 4)`): normalised xyxy boxes in the frame of `pixel_values`; enables `region_embeds`.
        box_mask (`(B, N)` bool): valid boxes; default all.
        phrase_token_mask (`(B, N, T)` bool): each box's phrase tokens in its image's caption; enables `lexeme_embeds`.
        phrase_ids (`(B, N)` int64): phrase-text ids, -1 for a box without phrase. With them, a valid box whose id is
            >= 0 must have phrase tokens, and LRC leaves out negatives with the same phrase text. Without them, a box
            is linked when its phrase row has a token.
        category_ids (`(B, N)` int64): what each box shows (a category id, -1: unknown); LRC also leaves out
            negatives of the same category.
        teacher_region_embeds (`(B, N, D)`): crop embeddings of the boxes from a teacher (`get_crop_features` of the
            processor's `crop_pixel_values`); enables GR. With `gr_teacher="self_with_grad"` GR back-propagates into
            them too.
        return_loss (`bool`): `loss` = w_gc GC + w_lrc LRC + w_rla RLA + w_gr GR over the terms that apply to this batch
            alone (`losses.harmoclip_loss`; a `ValueError` when none applies).

        `phrase_embeds` (each phrase encoded alone) are computed with `phrase_token_mask` when `loss_rla_weight` > 0.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("HarmoCLIPModel.forward needs both `pixel_values` and `input_ids`")
        region_mask, linked_mask, phrase_token_mask = self._check_region_inputs(
            input_ids, boxes, box_mask, phrase_token_mask, phrase_ids, category_ids, teacher_region_embeds
        )

        # Image tower: with boxes, the dense map reuses the trunk of the global pass (only the last layer runs twice).
        region_embeds = None
        if boxes is None:
            vision_outputs = self.get_image_features(
                pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
            )
        else:
            vision_outputs, trunk = self._image_features_and_trunk(pixel_values, interpolate_pos_encoding, **kwargs)
            dense = self._dense_from_trunk(trunk, self._patch_grid(pixel_values))
            region_embeds = self._pool_regions(dense, boxes, region_mask)

        # Text tower: the caption's pass also gives the token states of its phrases.
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        lexeme_embeds = phrase_embeds = None
        if phrase_token_mask is not None:
            lexeme_embeds, phrase_embeds = self._phrase_embeddings(
                input_ids, text_outputs.last_hidden_state, phrase_token_mask & linked_mask[..., None]
            )

        image_embeds = _normalize(vision_outputs.pooler_output)
        text_embeds = _normalize(text_outputs.pooler_output)
        logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device) * self.logit_scale.exp()
        logits_per_image = logits_per_text.t()

        terms = None
        if return_loss:
            terms = harmoclip_loss(
                image_embeds,
                text_embeds,
                self.logit_scale,
                **loss_weights(self.config),
                region_embeds=region_embeds,
                lexeme_embeds=lexeme_embeds,
                phrase_embeds=phrase_embeds,
                linked_mask=linked_mask,
                region_mask=region_mask,
                phrase_ids=phrase_ids,
                category_ids=category_ids if self.config.lrc_mask_categories else None,
                region_logit_scale=self.lrc_rla_logit_scale,
                teacher_region_embeds=teacher_region_embeds,
                teacher_grad=self.config.gr_teacher == "self_with_grad",
            )

        return HarmoCLIPOutput(
            loss=terms.total if terms is not None else None,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            region_embeds=region_embeds,
            lexeme_embeds=lexeme_embeds,
            phrase_embeds=phrase_embeds,
            region_mask=region_mask,
            linked_mask=linked_mask,
            loss_gc=terms.gc if terms is not None else None,
            loss_lrc=terms.lrc if terms is not None else None,
            loss_rla=terms.rla if terms is not None else None,
            loss_gr=terms.gr if terms is not None else None,
        )


def check_phrase_token_mask(
    phrase_token_mask: torch.Tensor, input_ids: torch.Tensor, boxes_shape: tuple[int, ...] | torch.Size | None = None
) -> None:
    """Validates a (B, N, T) phrase token mask against (B, T) `input_ids` and, if given, the boxes' (B, N)."""
    if not isinstance(phrase_token_mask, torch.Tensor):
        raise TypeError(
            f"`phrase_token_mask` must be a torch.Tensor of shape (B, N, T), got {type(phrase_token_mask).__name__}"
        )
    batch, length = input_ids.shape
    expected_n = (
        boxes_shape[1]
        if boxes_shape is not None
        else phrase_token_mask.shape[1]
        if phrase_token_mask.dim() == 3
        else None
    )
    if phrase_token_mask.dim() != 3 or tuple(phrase_token_mask.shape) != (batch, expected_n, length):
        raise ValueError(
            f"`phrase_token_mask` must have shape (B, N, T) = ({batch}, {expected_n}, {length}), got {tuple(phrase_token_mask.shape)}"
        )


HarmoCLIPConfig.register_for_auto_class("AutoConfig")
HarmoCLIPModel.register_for_auto_class("AutoModel")

__all__ = ["HarmoCLIPModel", "HarmoCLIPOutput", "check_boxes", "check_phrase_token_mask"]
