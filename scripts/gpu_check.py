"""CUDA check of the model and the training loop: fp32 parity of region features with the CPU (eager and compiled), a
bf16 training run of the embedded default on the GPU, and the saved model loaded back.
Usage: python -m scripts.gpu_check OUT_DIR"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from training.builders import PRESETS
from training.config import load_config
from training.train import train


def parity(report: dict) -> None:
    """The same random ViT-B/16-shaped model on CPU and GPU (fp32 and bf16): region and global embeddings."""
    torch.manual_seed(0)
    preset = PRESETS["vit-b-16"]
    config = HarmoCLIPConfig(
        text_config=preset["text"],
        vision_config=dict(image_size=224, patch_size=16, **preset["vision"]),
        projection_dim=preset["projection_dim"],
    )
    model = HarmoCLIPModel(config).eval()
    pixels = torch.randn(2, 3, 224, 224)
    boxes = torch.rand(2, 16, 2) * 0.6
    boxes = torch.cat([boxes, boxes + 0.1 + torch.rand(2, 16, 2) * 0.3], dim=-1)
    with torch.no_grad():
        compiled_cpu = model.compiled_region_features(fullgraph=True)(pixels, boxes)
        cpu_regions = model.get_region_features(pixels, boxes)
        cpu_global = model.get_image_features(pixel_values=pixels).pooler_output
        model.cuda()
        gpu_regions = model.get_region_features(pixels.cuda(), boxes.cuda()).cpu()
        gpu_global = model.get_image_features(pixel_values=pixels.cuda()).pooler_output.cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_regions = model.get_region_features(pixels.cuda(), boxes.cuda()).float().cpu()
            compiled_bf16 = model.compiled_region_features(fullgraph=True)(pixels.cuda(), boxes.cuda()).float().cpu()
    report["parity"] = {
        "fp32_region_max_abs_diff": float((cpu_regions - gpu_regions).abs().max()),
        "fp32_global_max_abs_diff": float((cpu_global - gpu_global).abs().max()),
        "bf16_region_min_cosine_to_fp32": float(
            torch.nn.functional.cosine_similarity(bf16_regions, cpu_regions, dim=-1).min()
        ),
        # torch.compile (inductor, one graph): on the CPU in fp32, and on the GPU under bf16 autocast.
        "compiled_cpu_fp32_region_max_abs_diff": float((compiled_cpu - cpu_regions).abs().max()),
        "compiled_bf16_region_min_cosine_to_fp32": float(
            torch.nn.functional.cosine_similarity(compiled_bf16, cpu_regions, dim=-1).min()
        ),
    }


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    import transformers

    report["transformers"] = transformers.__version__
    parity(report)
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml",
        {
            "mixed_precision": "bf16",
            "output_dir": str(out / "run"),
            "synthetic_dir": str(out / "synthetic"),
            "max_steps": 150,
            "num_workers": 4,
            "report_to": "none",
        },
    )
    start = time.perf_counter()
    model_dir = train(config)
    report["train_seconds"] = time.perf_counter() - start
    report["eval"] = json.loads((Path(config.output_dir) / "eval.json").read_text())["tasks"]["boxcls"]["results"][
        "dense"
    ]["top1"]
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    report["loaded_class"] = type(loaded).__name__
    print(json.dumps(report, indent=2))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
