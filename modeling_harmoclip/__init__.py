"""HarmoCLIP: CLIP with aligned global and region embeddings, in the Hugging Face format.

The files of this folder are also the model's remote code on the Hub, one concept each, as in transformers' model
folders: `configuration_harmoclip.py` (the config and the named recipes), `modeling_harmoclip.py` (the model and all
it computes: dense map, RoIAlign, region and phrase features, detection's heads), `losses.py` (GC, LRC, RLA, GR),
`image_processing_harmoclip.py` (reading images, box geometry, crops, every `post_process_*`),
`processing_harmoclip.py` (the processor: tokenizer and image processor with boxes and phrase spans) and
`pipeline_harmoclip.py` (the four task pipelines and the label embeddings they share). Each imports only torch,
transformers, the standard library and its siblings (relatively), so `trust_remote_code=True` loading needs nothing
else. `endpoint_handler.py` is the Inference Endpoints handler a published repository carries as `handler.py`.
"""

from transformers import AutoImageProcessor

from .configuration_harmoclip import HarmoCLIPConfig
from .image_processing_harmoclip import HarmoCLIPImageProcessor
from .losses import (
    HarmoCLIPLoss,
    global_contrastive_loss,
    global_region_alignment_loss,
    harmoclip_loss,
    lexeme_region_contrastive_loss,
)
from .modeling_harmoclip import HarmoCLIPDetectionOutput, HarmoCLIPModel, HarmoCLIPOutput, roi_align
from .pipeline_harmoclip import (
    DenseSegmentationPipeline,
    PhraseGroundingPipeline,
    RegionClassificationPipeline,
    ZeroShotRegionDetectionPipeline,
)
from .processing_harmoclip import HarmoCLIPProcessor

# In a process that imported the package, `AutoImageProcessor` finds the class for a HarmoCLIP folder without remote
# code (a saved folder's own copy registers itself through its `auto_map`).
AutoImageProcessor.register(HarmoCLIPConfig, slow_image_processor_class=HarmoCLIPImageProcessor, exist_ok=True)

__all__ = [
    "HarmoCLIPConfig",
    "HarmoCLIPModel",
    "HarmoCLIPOutput",
    "HarmoCLIPDetectionOutput",
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
