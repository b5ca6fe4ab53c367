#!/usr/bin/env bash
# Reproduction kit, for a machine with internet and a GPU: sets up .venv if needed, downloads OpenAI's CLIP ViT-B/16
# and the evaluation data into ./repro, converts the checkpoint, runs the fineclip and clipself box-classification
# protocols and Flickr30k / COCO retrieval, and prints our figures beside the published ones (scripts/reproduce.py).
#   bash scripts/reproduce.sh --flickr30k-images /data/flickr30k-images            # pre-trained CLIP
#   bash scripts/reproduce.sh --flickr30k-images /data/flickr30k-images --train    # + fine-tune with configs/vitb16_finetune.yaml
#   bash scripts/reproduce.sh --finetuned outputs/vitb16_coco/model                # + a model trained before
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m scripts.reproduce "$@"
