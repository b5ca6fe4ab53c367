"""Harmony benchmark: the global-region trade-off of each loss configuration, at toy scale on the synthetic shapes,
over several seeds paired by seed, with an open-vocabulary region test, from a toy CLIP that has CLIP's key property.

    python -m experiments.harmony                       # the evidence run (5 seeds; docs/toy_clip.md gives its cost)
    python -m experiments.harmony --quick --out /tmp/h  # a smoke run of the whole pipeline in a few minutes
    python -m experiments.harmony --pretrain-only       # only the toy CLIPs of the seeds, and their property
    python -m experiments.harmony --configurations gc harmoclip --row "gc-lrc-half:loss_lrc_weight=0.5,loss_gr_weight=0"

For each seed (which sets the data, the initialisation and the sampling):

1. generates the synthetic shapes (training/data/synthetic.py) with `synthetic_held_out` colour-shape combinations
   kept out of the training split: they are never drawn there, so never named in a training caption;
2. pre-trains the toy CLIP from scratch with the recipe `configs/toy_clip_pretrain.yaml` (GC with object-centric
   views, docs/toy_clip.md), with the project's training loop, once: its folder is named by its fingerprint;
3. fine-tunes it, with the same budget, under each configuration (`rows.py`): GC only; GR only (CLIPSelf-like: a
   frozen copy of the pre-trained model is the teacher); GC+GR (FineCLIP-like, without region captions); GC+LRC;
   GC+LRC+GR; the RLA and text-gradient variants the previous defaults came from; GC+LRC and GC+LRC+GR without the
   region terms' text gradients, LRC at 0.5 and 0.25; the `fineclip` recipe; and HarmoCLIP as `TrainConfig`'s
   defaults make it (the `harmoclip` recipe); plus any ``--row`` (a name and `TrainConfig` fields) or ``--recipe``
   (a named recipe) given;
4. evaluates every model on the held-out split: retrieval R@1 both directions (global; captions are unique), box
   Top-1 with dense region features, on the boxes of seen combinations and of held-out ones (region), plus the
   crop-and-encode baseline, and phrase grounding (each caption phrase's choice among its image's annotated boxes,
   seen and held-out combinations; and at IoU >= 0.5 among the model's own proposals).

The report (`report.py`) starts with the verdict and the pre-trained model's property (crop-and-encode Top-1 at least
1.5 times its dense-region Top-1, retrieval well above chance). Without the property, with one seed, or with rows
that cannot be told apart, the verdict is "not informative" (`statistics.conclude`). Then: each row's mean ± sd over
seeds; its paired differences against GC only (global, region seen, region held-out) with 95 % t intervals; the
held-out evaluation sample's own standard error; the stricter rule for every row; the recipe rule (among the rows
with LRC, those non-inferior to GC only in retrieval at a 1-point margin by their 95 % interval, the best on held-out
regions plus held-out grounding) and `harmoclip` side by side with `gc-gr` and `fineclip` on the three axes. Under ``--out`` (default
``outputs/harmony``): ``harmony.json`` (every figure, every setting, the command), ``harmony.md``, ``harmony.png``
(global against held-out region accuracy) and ``harmony.log``.

A row whose folder already holds its model and evaluation is reused, not retrained; a row interrupted mid-training
resumes from its last checkpoint. Settings are the fields of `HarmonySettings`; each is a command-line option
(``--finetune-steps 100``, ``--cache-teacher false``), and ``--config`` reads them from a YAML file.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: `python -m experiments.harmony` imports this package before __main__ sets OpenMP's wait policy, so the
    # package itself must not load torch.
    if name in ("main", "run_harmony", "run_benchmark"):
        from . import command_line

        return getattr(command_line, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
