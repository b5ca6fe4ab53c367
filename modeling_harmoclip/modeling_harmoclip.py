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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple

from .box_ops import check_boxes
from .configuration_harmoclip import HarmoCLIPConfig
from .dense_features import dense_map, image_features_and_regions, pool_regions, value_path_layer
from .detection import (
    MAP_THRESHOLDS,
    MAX_PROPOSALS,
    WINDOW_SCALES,
    HarmoCLIPDetectionOutput,
    detections_from_dense_map,
)
from .hub_code import copy_code_files, custom_pipelines
from .input_checks import check_crop_inputs, check_phrase_token_mask, check_region_inputs
from .losses import recipe_loss
from .text_features import lexemes_from_states, lexemes_separate, phrase_embeddings

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


def trains_region_logit_scale(config: HarmoCLIPConfig) -> bool:
    """Whether a loss term reads `region_logit_scale`: LRC or RLA weighted, at their own temperature (a
    `region_logit_scale_mode` other than "shared", where they use the global `logit_scale`)."""
    return config.region_logit_scale_mode != "shared" and (config.loss_lrc_weight > 0 or config.loss_rla_weight > 0)


def own_teacher_targets(
    model: nn.Module, crop_pixel_values: torch.Tensor, crop_mask: torch.Tensor | None, box_mask: torch.Tensor | None
) -> torch.Tensor:
    """(B, N, D) GR targets from the model itself: its crop embeddings (`get_crop_features`), with gradients only under
    `gr_teacher="self_with_grad"`."""
    teacher = model.config.gr_teacher
    if teacher not in ("self_with_grad", "self_stop_grad"):
        raise ValueError(
            f"`crop_pixel_values` make the model its own GR teacher, which needs `gr_teacher` 'self_with_grad' or "
            f"'self_stop_grad', got {teacher!r}; give a {teacher} teacher's targets as `teacher_region_embeds` "
            "(harmoclip-cache-teacher computes the starting weights' once)"
        )
    mask = crop_mask
    if box_mask is not None:
        mask = box_mask.bool() if mask is None else mask.bool() & box_mask.bool()
    with torch.set_grad_enabled(teacher == "self_with_grad" and torch.is_grad_enabled()):
        return model.get_crop_features(crop_pixel_values.to(model.dtype), mask)


def text_features_and_phrases(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    phrase_token_mask: torch.Tensor | None,
    linked_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[Any, torch.Tensor | None, torch.Tensor | None]:
    """The caption's text-tower pass (`get_text_features`, `return_dict=True`) and, with `phrase_token_mask`
    (B, N, T), the (B, N, D) lexeme and phrase embeddings of the linked boxes' phrases from it (else None, None)."""
    text_outputs = model.get_text_features(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
    )
    if phrase_token_mask is None:
        return text_outputs, None, None
    linked_tokens = phrase_token_mask & linked_mask[..., None]
    lexeme_embeds, phrase_embeds = phrase_embeddings(model, input_ids, text_outputs.last_hidden_state, linked_tokens)
    return text_outputs, lexeme_embeds, phrase_embeds


def with_recipe_loss(
    model: nn.Module,
    outputs: HarmoCLIPOutput,
    phrase_ids: torch.Tensor | None,
    category_ids: torch.Tensor | None,
    teacher_region_embeds: torch.Tensor | None,
) -> HarmoCLIPOutput:
    """`outputs` with `loss` (the config's weighted sum, `losses.recipe_loss`) and the unweighted terms filled in."""
    terms = recipe_loss(
        model.config,
        outputs,
        model.logit_scale,
        model.lrc_rla_logit_scale,
        phrase_ids=phrase_ids,
        category_ids=category_ids,
        teacher_region_embeds=teacher_region_embeds,
    )
    return replace(
        outputs, loss=terms.total, loss_gc=terms.gc, loss_lrc=terms.lrc, loss_rla=terms.rla, loss_gr=terms.gr
    )


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeds, dim=-1, eps=1e-12)


class HarmoCLIPModel(CLIPModel):
    """CLIP with region and lexeme embeddings. Parameter names are `CLIPModel`'s plus `region_logit_scale`.

    In `forward`, with `phrase_ids` a valid box whose id is >= 0 must have phrase tokens, and LRC leaves out negatives
    with the same phrase text; without them, a box is linked when its phrase row has a token. `crop_pixel_values`
    make the model its own GR teacher, as `gr_teacher` says ("self_with_grad": with gradients, FineCLIP;
    "self_stop_grad": without). A frozen or cached teacher's targets come as `teacher_region_embeds`
    (`harmoclip-cache-teacher` computes the frozen starting weights' once). The crops are what lets loops that only
    call `model(**batch)` (transformers' Trainer) train GR.
    """

    config_class = HarmoCLIPConfig
    config: HarmoCLIPConfig

    def __init__(self, config: HarmoCLIPConfig):
        super().__init__(config)
        # Log temperature of the lexeme-region contrast in "from_global" / "separate" mode. It is in every state dict
        # under the same name, so that a checkpoint's keys do not depend on the mode; it is a trainable parameter only
        # where a loss term reads it (`trains_region_logit_scale`), a persistent buffer otherwise: data parallelism
        # with `find_unused_parameters=False` (Trainer's choice under gradient checkpointing) needs every trainable
        # parameter to receive a gradient.
        start = self.region_logit_scale_start()
        if trains_region_logit_scale(config):
            self.region_logit_scale = nn.Parameter(start)
        else:
            self.register_buffer("region_logit_scale", start, persistent=True)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # CLIPModel.__init__ already runs post_init once, before `region_logit_scale` exists.
        if isinstance(module, HarmoCLIPModel) and hasattr(module, "region_logit_scale"):
            # CLIP leaves `logit_scale` to its `__init__`; set here too, so that a model built on the meta device and
            # initialised afterwards (`to_empty` + `init_weights`) starts from the config's value like any other.
            init.constant_(module.logit_scale, float(module.config.logit_scale_init_value))
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
        # The pipelines and the processor ship with the model: their config entries and their files beside the code,
        # as they registered themselves in `hub_code` (this file imports none of them).
        self.config.custom_pipelines = custom_pipelines(getattr(self.config, "custom_pipelines", None))
        result = super().save_pretrained(save_directory, *args, **kwargs)
        copy_code_files(save_directory, self.config.custom_pipelines)
        return result

    # ------------------------------------------------------------------ vision: trunk, dense map, regions

    def get_dense_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H/patch, W/patch) patch embeddings in the joint space, L2-normalised per location."""
        return F.normalize(dense_map(self, pixel_values, interpolate_pos_encoding), dim=1, eps=1e-12)

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
        dense = dense_map(self, pixel_values, interpolate_pos_encoding)
        return pool_regions(dense, boxes, box_mask, self.config.region_pooling)

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
        dense = dense_map(self, pixel_values, interpolate_pos_encoding)
        return pool_regions(dense, boxes, box_mask, self.config.region_pooling), F.normalize(dense, dim=1, eps=1e-12)

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
        crop_mask = check_crop_inputs(crop_pixel_values, crop_mask, chunk_size)
        batch, num_boxes = crop_pixel_values.shape[:2]
        crops = crop_pixel_values.flatten(0, 1)
        valid_index = crop_mask.to(device=crops.device, dtype=torch.bool).reshape(-1).nonzero(as_tuple=True)[0]
        embeds = crops.new_zeros(batch * num_boxes, self.config.projection_dim, dtype=torch.float32)
        for chunk in valid_index.split(chunk_size):
            crop_embeds = self.get_image_features(pixel_values=crops[chunk]).pooler_output
            embeds = embeds.index_copy(0, chunk, _normalize(crop_embeds.float()))
        return embeds.reshape(batch, num_boxes, -1)

    # ------------------------------------------------------------------ text: lexemes

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
            return lexemes_separate(self, input_ids, phrase_token_mask)
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return lexemes_from_states(self, states, phrase_token_mask)

    def get_phrase_features(self, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """Sentence-level phrase embeddings: each phrase encoded as its own text (BOS + its caption tokens + EOS)
        through the whole text tower, end-of-text pooled, projected; whatever `lexeme_mode` is.

        Args:
            input_ids: (B, T) captions, one per image; phrase_token_mask: (B, N, T) bool, each box's phrase tokens.
        Returns:
            (B, N, D) float32, L2-normalised; rows without tokens are zeros.
        """
        check_phrase_token_mask(phrase_token_mask, input_ids)
        return lexemes_separate(self, input_ids, phrase_token_mask.to(device=input_ids.device, dtype=torch.bool))

    # ------------------------------------------------------------------ detection

    @torch.no_grad()
    def detect(
        self,
        pixel_values: torch.Tensor,
        label_embeds: torch.Tensor,
        background_embed: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        map_thresholds: Sequence[float] = MAP_THRESHOLDS,
        window_scales: Sequence[float] = WINDOW_SCALES,
        max_proposals: int = MAX_PROPOSALS,
    ) -> HarmoCLIPDetectionOutput:
        """Open-vocabulary detection and label maps from one pass of the image encoder: per-patch label probabilities,
        boxes proposed from them (or the user's), each box scored by its region embedding, at `logit_scale.exp()`.

        Args:
            pixel_values: (B, 3, H, W); label_embeds: (L, D) L2-normalised (`zero_shot.label_embeddings`);
            background_embed: (D,) a label that competes and is dropped, or None (see `detection`'s docstring).
            boxes: (B, N, 4) normalised xyxy in the frame of `pixel_values`; None: proposals from the label maps at
                `map_thresholds` and `window_scales`, at most `max_proposals` per image. box_mask: (B, N) valid boxes.
        Returns:
            `HarmoCLIPDetectionOutput` (on the CPU), read by the processor's `post_process_object_detection` and
            `post_process_semantic_segmentation`.
        """
        return detections_from_dense_map(
            dense_map(self, pixel_values, interpolate_pos_encoding),
            label_embeds,
            self.logit_scale.exp().item(),
            background_embed,
            boxes,
            box_mask,
            self.config.region_pooling,
            map_thresholds,
            window_scales,
            max_proposals,
        )

    # ------------------------------------------------------------------ forward

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
        crop_pixel_values: torch.Tensor | None = None,
        crop_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HarmoCLIPOutput | tuple:
        r"""
        With only `input_ids` and `pixel_values` this is `CLIPModel.forward`, `return_dict=False` (a tuple),
        `output_hidden_states` and `output_attentions` included; with boxes, CLIP's fields are unchanged and complete
        too. Additionally:

        boxes (`(B, N, 4)`): normalised xyxy boxes in the frame of `pixel_values`; enables `region_embeds`.
        box_mask (`(B, N)` bool): valid boxes; default all.
        phrase_token_mask (`(B, N, T)` bool): each box's phrase tokens in its image's caption; enables `lexeme_embeds`.
        phrase_ids (`(B, N)` int64): phrase-text ids, -1 for a box without phrase (see the class docstring).
        category_ids (`(B, N)` int64): what each box shows (a category id, -1: unknown); LRC also leaves out
            negatives of the same category.
        teacher_region_embeds (`(B, N, D)`): crop embeddings of the boxes from a teacher (`get_crop_features` of the
            processor's `crop_pixel_values`); enables GR, back-propagated into under `gr_teacher="self_with_grad"`.
        crop_pixel_values (`(B, N, 3, S, S)`), crop_mask (`(B, N)` bool): the boxes' crops (`return_crops=True`), for
            a batch without `teacher_region_embeds`: the model is its own GR teacher (see the class docstring).
        return_loss (`bool`): `loss` = w_gc GC + w_lrc LRC + w_rla RLA + w_gr GR over the terms that apply to this batch
            alone (`losses.recipe_loss` of this config; a `ValueError` when none applies).

        `phrase_embeds` (each phrase encoded alone) are computed with `phrase_token_mask` when `loss_rla_weight` > 0.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("HarmoCLIPModel.forward needs both `pixel_values` and `input_ids`")
        if crop_pixel_values is not None and teacher_region_embeds is None:
            teacher_region_embeds = own_teacher_targets(self, crop_pixel_values, crop_mask, box_mask)
        region_mask, linked_mask, phrase_token_mask = check_region_inputs(
            self.config.projection_dim,
            input_ids,
            boxes,
            box_mask,
            phrase_token_mask,
            phrase_ids,
            category_ids,
            teacher_region_embeds,
        )

        # Image tower: with boxes, the dense map reuses the trunk of the global pass (only the last layer runs twice).
        vision_outputs, region_embeds = image_features_and_regions(
            self, pixel_values, boxes, region_mask, interpolate_pos_encoding, **kwargs
        )
        # Text tower: the caption's pass also gives the token states of its phrases.
        text_outputs, lexeme_embeds, phrase_embeds = text_features_and_phrases(
            self, input_ids, attention_mask, position_ids, phrase_token_mask, linked_mask, **kwargs
        )
        image_embeds = _normalize(vision_outputs.pooler_output)
        text_embeds = _normalize(text_outputs.pooler_output)
        logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device) * self.logit_scale.exp()
        outputs = HarmoCLIPOutput(
            logits_per_image=logits_per_text.t(),
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
        )
        if not return_loss:
            return outputs
        return with_recipe_loss(self, outputs, phrase_ids, category_ids, teacher_region_embeds)


HarmoCLIPConfig.register_for_auto_class("AutoConfig")
HarmoCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "HarmoCLIPModel",
    "HarmoCLIPOutput",
    "check_boxes",
    "check_phrase_token_mask",
    "trains_region_logit_scale",
    "value_path_layer",
]
