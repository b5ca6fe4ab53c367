"""HarmoCLIP: CLIP with aligned global and region embeddings, in the Hugging Face format.

The files of this folder are also the model's remote code on the Hub: each imports only torch, transformers, the
standard library and its siblings (relatively), so `trust_remote_code=True` loading needs nothing else.
"""

from .configuration_harmoclip import HarmoCLIPConfig
from .image_processing_harmoclip import HarmoCLIPImageProcessor
from .losses import (
    HarmoCLIPLoss,
    global_contrastive_loss,
    global_region_alignment_loss,
    harmoclip_loss,
    lexeme_region_contrastive_loss,
)
from .modeling_harmoclip import HarmoCLIPModel, HarmoCLIPOutput
from .pipeline_detection import DenseSegmentationPipeline, ZeroShotRegionDetectionPipeline
from .pipeline_grounding import PhraseGroundingPipeline
from .pipeline_harmoclip import RegionClassificationPipeline
from .processing_harmoclip import HarmoCLIPProcessor
from .roi_align import roi_align

__all__ = [
    "HarmoCLIPConfig",
    "HarmoCLIPModel",
    "HarmoCLIPOutput",
    "HarmoCLIPProcessor",
    "HarmoCLIPImageProcessor",
    "RegionClassificationPipeline",
    "ZeroShotRegionDetectionPipeline",
    "DenseSegmentationPipeline",
    "PhraseGroundingPipeline",
    "harmoclip_loss",
    "HarmoCLIPLoss",
    "roi_align",
    "global_contrastive_loss",
    "lexeme_region_contrastive_loss",
    "global_region_alignment_loss",
]
