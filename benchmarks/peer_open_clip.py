"""Training step against the peer: HarmoCLIP's step against open_clip's CLIP at the same geometry, batch, precision
and optimiser (FineCLIP and CLIPSelf train on open_clip).

    bash scripts/setup_peer_env.sh                                   # once: .venv-peer with open_clip and torchvision
    .venv-peer/bin/python -m benchmarks.peer_open_clip --device cpu  # ViT-B/16 at 224 px, batch 2 on the CPU
    .venv-peer/bin/python -m benchmarks.peer_open_clip --device cuda --dtype bf16   # batch 8 on a GPU

Methods, alternating round by round on one fixed batch (random weights):
- `open_clip`: open_clip's `CLIP` built with HarmoCLIP's geometry (for ViT-B/16 that is open_clip's
  `ViT-B-16-quickgelu`, checked by parameter count), the step of open_clip's training loop: forward under autocast,
  `ClipLoss`, backward, gradient clipping, AdamW, logit-scale clamp. Captions are 77 tokens, as open_clip always
  encodes them.
- `GC` and `GC+LRC+GR cached`: HarmoCLIP's training-loop step (benchmarks/train_step.py's `StepRunner`: the loop's
  `forward_objective` + backward + clipping + AdamW + clamps), GR from a real teacher cache. Each twice: captions
  padded to 77 tokens (the same shapes as open_clip's: what the targets compare) and padded to the longest caption of
  the batch (what the training collator does).
Both optimisers are `torch.optim.AdamW` with the same groups, learning rate, betas and epsilon. Targets: GC at most
1.05 x open_clip's step time, GC+LRC+GR cached at most 1.15 x.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from benchmarks.harness import BenchmarkSpec, Measurement, autocast, write_profiles
from benchmarks.inputs import temporary_folder
from benchmarks.tables import ratio_cell, spread_cell, target
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from benchmarks.train_step import (
    StepRunner,
    add_step_arguments,
    resolve_step_arguments,
    variant_config,
    write_step_inputs,
)

NAME = "peer_open_clip"
PEER = "open_clip"
LIMITS = {"GC": 1.05, "GC+LRC+GR cached": 1.15}  # step time / open_clip's, captions of the same length
SETUP_HINT = "run `bash scripts/setup_peer_env.sh` and use .venv-peer/bin/python"


def require_open_clip() -> Any:
    """The `open_clip` module, or a one-line error saying how to get the environment that has it."""
    try:
        import open_clip
    except ImportError as error:
        raise RuntimeError(f"{NAME}: open_clip is not installed in {sys.executable} ({error}); {SETUP_HINT}") from None
    return open_clip


def open_clip_geometry(config: Any) -> dict[str, Any]:
    """open_clip's model config (the fields of its `model_configs/*.json`) with the geometry of a HarmoCLIP/CLIP
    `config`; raises ValueError for what open_clip's CLIP cannot express."""
    vision, text = config.vision_config, config.text_config
    for name, tower in (("vision", vision), ("text", text)):
        if tower.hidden_act != "quick_gelu" or tower.hidden_size % tower.num_attention_heads:
            raise ValueError(
                f"{name} tower: open_clip's CLIP needs quick_gelu and whole heads, got "
                f"{tower.hidden_act!r}, width {tower.hidden_size}, {tower.num_attention_heads} heads"
            )
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": vision.image_size,
            "layers": vision.num_hidden_layers,
            "width": vision.hidden_size,
            "patch_size": vision.patch_size,
            "head_width": vision.hidden_size // vision.num_attention_heads,
            "mlp_ratio": vision.intermediate_size / vision.hidden_size,
        },
        "text_cfg": {
            "context_length": text.max_position_embeddings,
            "vocab_size": text.vocab_size,
            "width": text.hidden_size,
            "heads": text.num_attention_heads,
            "layers": text.num_hidden_layers,
            "mlp_ratio": text.intermediate_size / text.hidden_size,
        },
    }


def pad_captions(batch: dict[str, Any], length: int, pad_token_id: int) -> dict[str, Any]:
    """The batch with its captions padded to `length` tokens: `input_ids` (B, T) with `pad_token_id`, `attention_mask`
    (B, T) and `phrase_token_mask` (B, N, T) with zeros. Embeddings are unchanged (the padding is masked)."""
    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"captions of {batch['input_ids'].shape[1]} tokens cannot be padded to {length}")
    padded = dict(batch)
    padded["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_token_id)
    padded["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)
    if batch.get("phrase_token_mask") is not None:
        padded["phrase_token_mask"] = torch.nn.functional.pad(batch["phrase_token_mask"], (0, extra), value=False)
    return padded


class PeerStep:
    """open_clip's CLIP, its loss and an AdamW like ours, on fixed images and 77-token captions; `step()` is one
    iteration of open_clip's training loop (open_clip_train/train.py) without data loading and logging."""

    def __init__(
        self,
        open_clip: Any,
        geometry: dict[str, Any],
        images: torch.Tensor,
        input_ids: torch.Tensor,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
    ):
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        from training.train import parameter_groups

        torch.manual_seed(seed)
        self.model = (
            CLIP(
                embed_dim=geometry["embed_dim"],
                vision_cfg=CLIPVisionCfg(**geometry["vision_cfg"]),
                text_cfg=CLIPTextCfg(**geometry["text_cfg"]),
                quick_gelu=geometry["quick_gelu"],
            )
            .to(device)
            .train()
        )
        self.loss = open_clip.ClipLoss()
        # open_clip's loop exempts norms, biases, embeddings' scalars and the logit scale from weight decay, as ours.
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
        )
        self.images, self.input_ids = images, input_ids
        self.config, self.device, self.dtype = config, device, dtype
        self.last_loss: float | None = None

    def step(self) -> None:
        with autocast(self.device, self.dtype):
            image_features, text_features, logit_scale = self.model(self.images, self.input_ids)[:3]
            total = self.loss(image_features, text_features, logit_scale)
        total.backward()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))
        self.last_loss = float(total.detach())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def step_rows(
    times: dict[str, list[float]], caption_tokens: dict[str, int], batch_size: int
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Each method's step time, its ratio to open_clip's (per round) and its samples/s: the JSON results and the table's
    rows."""
    results, rows = [], []
    for method, seconds in times.items():
        summary = summarize(seconds)
        ratio = ratio_summary(seconds, times[PEER])
        layout = method.rsplit(", ", 1)[1] if ", " in method else "77"
        results.append(
            {
                "method": method,
                "step": summary,
                "time_ratio_to_open_clip": ratio,
                "samples_per_s": batch_size / summary["median_s"],
                "caption_tokens": caption_tokens[layout],
            }
        )
        rows.append(
            [
                method,
                caption_tokens[layout],
                summary["median_s"] * 1e3,
                spread_cell(summary),
                batch_size / summary["median_s"],
                ratio_cell(ratio, digits=3, range_digits=2),
            ]
        )
    return results, rows


def matched_peer(
    open_clip: Any, runner: StepRunner, padded_batch: dict[str, Any], args: argparse.Namespace
) -> tuple[PeerStep, dict[str, Any], int]:
    """open_clip's step on our GC step's geometry, inputs (captions padded to the context) and hyper-parameters;
    returns it, its geometry and the parameter count both CLIPs share (a `RuntimeError` where they differ)."""
    geometry = open_clip_geometry(runner.unwrapped.config)
    peer = PeerStep(
        open_clip,
        geometry,
        runner.batch["pixel_values"],
        padded_batch["input_ids"],
        runner.configs["GC"],
        runner.accelerator.device,
        args.dtype,
        args.seed,
    )
    ours_parameters = count_parameters(runner.unwrapped) - runner.unwrapped.region_logit_scale.numel()
    if count_parameters(peer.model) != ours_parameters:
        raise RuntimeError(
            f"open_clip's model has {count_parameters(peer.model)} parameters, HarmoCLIP's CLIP part "
            f"{ours_parameters}: the geometries differ"
        )
    return peer, geometry, ours_parameters


def measure(args: argparse.Namespace) -> Measurement:
    """open_clip's step and HarmoCLIP's GC and GC+LRC+GR cached steps, side by side on one batch."""
    open_clip = require_open_clip()
    args = resolve_step_arguments(args)
    ours = ["GC", "GC+LRC+GR cached"]
    with temporary_folder("harmoclip-peer-") as folder:
        manifest, cache_dir = write_step_inputs(args, folder)
        runner = StepRunner({name: variant_config(args, name, manifest, cache_dir) for name in ours}, args.device)
        model_config = runner.unwrapped.config
        context = model_config.text_config.max_position_embeddings
        batches = {
            "77": pad_captions(runner.batch, context, model_config.text_config.pad_token_id),
            "longest": runner.batch,
        }
        peer, geometry, ours_parameters = matched_peer(open_clip, runner, batches["77"], args)

        methods: dict[str, Any] = {PEER: peer.step}
        for name in ours:
            for layout, batch in batches.items():
                methods[f"{name}, {layout}"] = lambda name=name, batch=batch: runner.step(name, batch)
        times = time_side_by_side(methods, runner.accelerator.device, args.repeats, max(args.warmup, 1), progress=NAME)
        write_profiles(args, methods, runner.accelerator.device)
        caption_tokens = {layout: int(batch["input_ids"].shape[1]) for layout, batch in batches.items()}
        attention = {
            "harmoclip": model_config._attn_implementation,
            "open_clip": "nn.MultiheadAttention (F.multi_head_attention_forward, SDPA kernel when need_weights=False)",
        }
        losses = {PEER: peer.last_loss, **{name: runner.last_terms.get(name) for name in ours}}
        runner = peer = None  # frees the models

    results, rows = step_rows(times, caption_tokens, args.batch_size)
    by_method = {result["method"]: result for result in results}
    targets = [
        target(
            f"{name} step / open_clip step (77 tokens)",
            f"<= {limit}",
            by_method[f"{name}, 77"]["time_ratio_to_open_clip"]["median"],
            limit,
            False,
        )
        for name, limit in LIMITS.items()
    ]
    settings = {
        "model_preset": args.preset,
        "batch_size": args.batch_size,
        "boxes_per_image": args.boxes,
        "open_clip": open_clip.__version__,
        "open_clip_geometry": geometry,
        "parameters": ours_parameters,
        "attention": attention,
        "caption_tokens": caption_tokens,
        "last_losses": losses,
        "optimizer": "torch.optim.AdamW, same groups and hyper-parameters",
    }
    notes = [
        f"{args.preset} geometry ({ours_parameters:,} parameters in both CLIPs), random weights, batch {args.batch_size} "
        f"with {args.boxes} linked boxes per image, {args.dtype_name}; median of {args.repeats} alternating rounds after "
        f"{max(args.warmup, 1)} warm-up step(s) each; ratios are medians of per-round ratios to open_clip's step. "
        f"Attention: HarmoCLIP {attention['harmoclip']}, open_clip {attention['open_clip']}."
    ]
    columns = ["method", "caption tokens", "ms/step", "spread", "samples/s", "time / open_clip (min-max)"]
    return Measurement(columns, rows, results, settings, notes, targets)


# Runs in its own environment (.venv-peer, with open_clip): the harness is the same, only the interpreter differs.
SPEC = BenchmarkSpec(
    NAME, __doc__, measure, options=add_step_arguments, cpu_repeats=7, cuda_repeats=20, model_preset=True
)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
