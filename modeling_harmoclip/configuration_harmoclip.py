"""Configuration of HarmoCLIP: CLIP's text and vision configs plus the region / lexeme settings."""

from __future__ import annotations

from typing import Any

from transformers import CLIPConfig

DENSE_MODES = ("value", "full")
TEACHER_MODES = ("frozen", "self_stop_grad", "self_with_grad", "cached", "none")
# Older names of teacher modes, still read (saved configs) and mapped to what they meant.
TEACHER_ALIASES = {"self": "self_stop_grad"}
LEXEME_MODES = ("token", "separate")
REGION_POOLING_MODES = ("normalize_then_pool", "pool_then_normalize")
REGION_LOGIT_SCALE_MODES = ("shared", "from_global", "separate")


class HarmoCLIPConfig(CLIPConfig):
    r"""
    Configuration of a [`HarmoCLIPModel`]. Everything `CLIPConfig` holds (``text_config``, ``vision_config``,
    ``projection_dim``, ``logit_scale_init_value``) plus:

    dense_mode (`str`, defaults to `"value"`):
        How the last vision layer produces patch features for regions. `"value"`: attention replaced by its value
        path, `out_proj(v_proj(layer_norm1(x)))` (as CLIPSelf / FineCLIP); `"full"`: the ordinary last layer.
    loss_gc_weight, loss_lrc_weight, loss_gr_weight (`float`, defaults to 1.0 each):
        Weights of the global contrastive, lexeme-region contrastive and global-region alignment losses.
    loss_rla_weight (`float`, defaults to 0.0):
        Weight of the region-language alignment loss: regions against their phrases encoded alone (sentence level).
    gr_crop_scale (`float`, defaults to 1.5):
        Factor by which a box is enlarged (about its centre) before its crop is cut from the original image for the GR
        teacher: the `crop_scale` training passes to the processor (as CLIPSelf and FineCLIP, 1.5).
    gr_teacher (`str`, defaults to `"frozen"`):
        Which model embeds the crops for GR: `"frozen"` copy of the starting weights (CLIPSelf), the live model with
        gradients through its crop branch (`"self_with_grad"`, FineCLIP) or without (`"self_stop_grad"`; the older
        name `"self"` means this), embeddings `"cached"` ahead of training, or `"none"` (GR disabled).
    lexeme_mode (`str`, defaults to `"token"`):
        `"token"`: phrases are mean-pooled token states of the whole caption; `"separate"`: each phrase is encoded
        as its own text.
    region_pooling (`str`, defaults to `"normalize_then_pool"`):
        `"normalize_then_pool"`: every projected patch token is L2-normalised, then RoIAlign pools the box, then the
        result is normalised again (CLIPSelf's and FineCLIP's `extract_roi_features` "v2"); `"pool_then_normalize"`:
        RoIAlign of the unnormalised map, normalised after (high-norm patch tokens then weigh more).
    region_logit_scale_mode (`str`, defaults to `"shared"`):
        The log temperature of the LRC loss. `"shared"`: the global `logit_scale` (FineCLIP's region contrast uses
        the model's own logit scale); `"from_global"`: its own parameter `region_logit_scale`, initialised from the
        global one where the weights come from a CLIP; `"separate"`: its own parameter initialised to
        `region_logit_scale_init_value`.
    region_text_grad (`bool`, defaults to `True`):
        Whether the LRC and RLA terms train the text tower. `False`: their phrase embeddings are computed without
        gradient, so only GC changes the text tower and the region terms move the image encoder alone.
    region_logit_scale_init_value (`float`, defaults to 2.6592 = log(1/0.07)):
        Initial value of `region_logit_scale` in `"separate"` mode (and in `"from_global"` mode for a model built
        from scratch, where the global scale starts at `logit_scale_init_value`).
    """

    model_type = "harmoclip"

    dense_mode: str = "value"
    loss_gc_weight: float = 1.0
    loss_lrc_weight: float = 1.0
    loss_gr_weight: float = 1.0
    loss_rla_weight: float = 0.0
    gr_crop_scale: float = 1.5
    gr_teacher: str = "frozen"
    lexeme_mode: str = "token"
    region_pooling: str = "normalize_then_pool"
    region_logit_scale_mode: str = "shared"
    region_logit_scale_init_value: float = 2.6592
    region_text_grad: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.gr_teacher = TEACHER_ALIASES.get(self.gr_teacher, self.gr_teacher)
        self._check_harmoclip_settings()

    def _check_harmoclip_settings(self) -> None:
        choices = (
            ("dense_mode", DENSE_MODES),
            ("gr_teacher", TEACHER_MODES),
            ("lexeme_mode", LEXEME_MODES),
            ("region_pooling", REGION_POOLING_MODES),
            ("region_logit_scale_mode", REGION_LOGIT_SCALE_MODES),
        )
        for name, allowed in choices:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"HarmoCLIPConfig: `{name}` must be one of {allowed}, got {value!r}")
        for name in ("loss_gc_weight", "loss_lrc_weight", "loss_gr_weight", "loss_rla_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"HarmoCLIPConfig: `{name}` must be a non-negative number, got {value!r}")
        if not isinstance(self.region_text_grad, bool):
            raise ValueError(
                f"HarmoCLIPConfig: `region_text_grad` must be true or false, got {self.region_text_grad!r}"
            )
        if not isinstance(self.gr_crop_scale, (int, float)) or not self.gr_crop_scale > 0:
            raise ValueError(f"HarmoCLIPConfig: `gr_crop_scale` must be a positive number, got {self.gr_crop_scale!r}")

    @classmethod
    def from_clip_config(cls, clip_config: CLIPConfig, **harmoclip_settings: Any) -> HarmoCLIPConfig:
        """Builds a HarmoCLIP config with the same towers as `clip_config` and the given HarmoCLIP settings."""
        if not isinstance(clip_config, CLIPConfig):
            raise TypeError(f"from_clip_config: `clip_config` must be a CLIPConfig, got {type(clip_config).__name__}")
        values = clip_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        values.update(harmoclip_settings)
        return cls(**values)


__all__ = [
    "HarmoCLIPConfig",
    "DENSE_MODES",
    "TEACHER_MODES",
    "TEACHER_ALIASES",
    "LEXEME_MODES",
    "REGION_POOLING_MODES",
    "REGION_LOGIT_SCALE_MODES",
]
