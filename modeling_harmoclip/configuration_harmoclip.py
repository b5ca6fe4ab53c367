"""Configuration of HarmoCLIP: CLIP's text and vision configs plus the region / lexeme settings."""

from __future__ import annotations

from typing import Any

from transformers import CLIPConfig

DENSE_MODES = ("value", "full")
TEACHER_MODES = ("frozen", "self", "cached", "none")
LEXEME_MODES = ("token", "separate")


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
        Which model embeds the crops for GR: `"frozen"` copy of the starting weights, the live model (`"self"`),
        embeddings `"cached"` ahead of training, or `"none"` (GR disabled).
    lexeme_mode (`str`, defaults to `"token"`):
        `"token"`: phrases are mean-pooled token states of the whole caption; `"separate"`: each phrase is encoded
        as its own text.
    region_logit_scale_init_value (`float`, defaults to 2.6592 = log(1/0.07)):
        Initial value of the learnable log temperature of the LRC loss.
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
    region_logit_scale_init_value: float = 2.6592

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._check_harmoclip_settings()

    def _check_harmoclip_settings(self) -> None:
        for name, allowed in (("dense_mode", DENSE_MODES), ("gr_teacher", TEACHER_MODES), ("lexeme_mode", LEXEME_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"HarmoCLIPConfig: `{name}` must be one of {allowed}, got {value!r}")
        for name in ("loss_gc_weight", "loss_lrc_weight", "loss_gr_weight", "loss_rla_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"HarmoCLIPConfig: `{name}` must be a non-negative number, got {value!r}")
        if not isinstance(self.gr_crop_scale, (int, float)) or not self.gr_crop_scale > 0:
            raise ValueError(f"HarmoCLIPConfig: `gr_crop_scale` must be a positive number, got {self.gr_crop_scale!r}")

    @classmethod
    def from_clip_config(cls, clip_config: CLIPConfig, **harmoclip_settings: Any) -> "HarmoCLIPConfig":
        """Builds a HarmoCLIP config with the same towers as `clip_config` and the given HarmoCLIP settings."""
        if not isinstance(clip_config, CLIPConfig):
            raise TypeError(f"from_clip_config: `clip_config` must be a CLIPConfig, got {type(clip_config).__name__}")
        values = clip_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        values.update(harmoclip_settings)
        return cls(**values)


__all__ = ["HarmoCLIPConfig", "DENSE_MODES", "TEACHER_MODES", "LEXEME_MODES"]
