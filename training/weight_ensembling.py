"""Weight-space ensembling of a fine-tuned model with the weights it started from (WiSE-FT: Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022): every parameter becomes ``(1 - alpha) * start + alpha * fine-tuned``.
alpha = 1 is the fine-tuned model, alpha = 0 the start; in between, fine-tuning's gains are traded against what the
start knew. A procedure applied after training, not a loss term: the fine-tuned folder is left as it is and the
ensemble is written as a Hub-ready folder of its own (the fine-tuned one's config, processor and code), atomically.

    python -m training.weight_ensembling --start outputs/clip --finetuned outputs/run/model --alpha 0.5 \\
        --out outputs/run/wise-0.5

WiSE-FT chooses alpha on held-out data; which data and by which rule is the caller's (the harmony experiment chooses
it on its dev split, never on the split it reports).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from conversion.model_folder import require_model_type
from modeling_harmoclip.configuration_harmoclip import HarmoCLIPConfig
from modeling_harmoclip.modeling_harmoclip import HarmoCLIPModel
from plumbing.atomic_files import check_output_dir, save_model_atomically
from plumbing.command_line import CommandParser, run_command
from training.builders import load_processor


def check_alpha(alpha: object) -> float:
    """`alpha` as a float in [0, 1]; a one-line `ValueError` naming it otherwise."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def interpolate_state_dicts(
    start: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * finetuned`` for every floating-point tensor; other tensors (integer buffers such
    as position ids) must be equal and are kept. Both must hold the same names and shapes: a one-line `ValueError`
    names the first that differs."""
    alpha = check_alpha(alpha)
    if start.keys() != finetuned.keys():
        only = sorted(start.keys() ^ finetuned.keys())
        raise ValueError(f"the two models' parameters differ: {only[0]!r} is in one only ({len(only)} names in all)")
    mixed = {}
    for name, tuned in finetuned.items():
        base = start[name]
        if base.shape != tuned.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(base.shape)} at the start, {tuple(tuned.shape)} tuned"
            )
        if tuned.is_floating_point():
            mixed[name] = torch.lerp(base.to(tuned.dtype), tuned, alpha)
        elif torch.equal(base, tuned):
            mixed[name] = tuned.clone()
        else:
            raise ValueError(f"non-float tensor {name!r} differs between the two models and cannot be interpolated")
    return mixed


def weight_ensemble(start: HarmoCLIPModel, finetuned: HarmoCLIPModel, alpha: float) -> HarmoCLIPModel:
    """A new model with `finetuned`'s config and ``(1 - alpha) * start + alpha * finetuned`` weights (the models are
    not changed)."""
    mixed = interpolate_state_dicts(start.state_dict(), finetuned.state_dict(), alpha)
    model = HarmoCLIPModel(finetuned.config)
    model.load_state_dict(mixed)
    return model.eval()


def write_weight_ensemble(
    start_dir: str | Path, finetuned_dir: str | Path, alpha: float, out: str | Path, overwrite: bool = False
) -> Path:
    """Loads both HarmoCLIP folders, mixes them at `alpha` and writes a Hub-ready folder (weights, config, processor,
    code) at `out`, atomically: `out` is complete or as it was."""
    alpha = check_alpha(alpha)
    check_output_dir(out, overwrite)
    start_dir = require_model_type(start_dir, HarmoCLIPConfig.model_type, "start")
    finetuned_dir = require_model_type(finetuned_dir, HarmoCLIPConfig.model_type, "finetuned")
    start = HarmoCLIPModel.from_pretrained(start_dir).eval()
    finetuned = HarmoCLIPModel.from_pretrained(finetuned_dir).eval()
    model = weight_ensemble(start, finetuned, alpha)
    processor = load_processor(finetuned_dir, region_mode=False)
    return save_model_atomically(model, processor, out)


def main(argv: list[str] | None = None) -> int:
    """`harmoclip-wise-ft`: the command line of `write_weight_ensemble`; returns the exit code."""

    def run() -> str:
        parser = CommandParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--start", required=True, help="HarmoCLIP folder of the weights fine-tuning started from")
        parser.add_argument("--finetuned", required=True, help="HarmoCLIP folder of the fine-tuned model")
        parser.add_argument("--alpha", required=True, type=float, help="weight of the fine-tuned model, in [0, 1]")
        parser.add_argument("--out", required=True, help="folder to write (Hub-ready)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        args = parser.parse_args(argv)
        out = write_weight_ensemble(args.start, args.finetuned, args.alpha, args.out, args.overwrite)
        return f"weight ensemble at alpha {args.alpha:g} written to {out}"

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["check_alpha", "interpolate_state_dicts", "weight_ensemble", "write_weight_ensemble", "main"]
