"""Loss curves from the training metrics (JSONL) as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("loss", "total"), ("loss_gc", "GC"), ("loss_lrc", "LRC"), ("loss_gr", "GR"))


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_loss_curves(metrics_path: str | Path, output_path: str | Path, title: str = "HarmoCLIP training") -> Path:
    """Draws every loss term against the step, with the learning rate on a second axis."""
    records = read_metrics(metrics_path)
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, label in CURVES:
        points = [(record["step"], record[key]) for record in records if key in record]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, label=label, linewidth=2 if key == "loss" else 1.2)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    rates = [(record["step"], record["lr"]) for record in records if "lr" in record]
    if rates:
        second = axis.twinx()
        second.plot(*zip(*rates), color="grey", linestyle=":", label="learning rate")
        second.set_ylabel("learning rate")
        second.legend(loc="upper center")
    axis.legend(loc="upper right")
    figure.tight_layout()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path)
    plt.close(figure)
    return output_path
