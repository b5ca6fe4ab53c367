"""The evaluation command on data files in their real formats, with a tiny model saved as a Hub-ready folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_harmoclip_model
from evaluation.embeddings import (
    evaluate_retrieval,
)
from evaluation.eval_data import (
    read_karpathy,
)
from evaluation_files import (  # noqa: F401  (fixtures, used by name as parameters)
    coco_panoptic,
    karpathy_coco,
    model,
    processor,
    write_coco_panoptic,
    write_karpathy_coco,
)

# ---------------------------------------------------------------------------------------------------- the command


@pytest.fixture
def saved_model_dir(tmp_path, processor) -> Path:
    folder = tmp_path / "tiny-harmoclip"
    tiny_harmoclip_model(seed=3).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_command_evaluates_retrieval_from_a_saved_model(karpathy_coco, saved_model_dir, model, processor, tmp_path):
    out = tmp_path / "results" / "flickr.json"
    command = [
        sys.executable,
        "-m",
        "evaluation.evaluate",
        "--model",
        str(saved_model_dir),
        "--task",
        "retrieval",
        "--data",
        str(karpathy_coco),
        "--image-root",
        str(karpathy_coco.parent / "coco"),
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m evaluation.evaluate --model ")
    assert report["command"].endswith(f"--out {out}")
    assert report["settings"]["split"] == "test" and report["settings"]["batch_size"] == 3
    data = read_karpathy(karpathy_coco, karpathy_coco.parent / "coco", split="test")
    expected = evaluate_retrieval(model, processor, data)
    for key, value in expected.items():
        assert report["results"][key] == pytest.approx(value, abs=1e-4), key
    markdown = out.with_suffix(".md").read_text()
    assert "| images | captions | I2T R@1 |" in markdown and "| 4 | 20 |" in markdown
    assert markdown.strip() in result.stdout
    assert "command: python -m evaluation.evaluate" in out.with_suffix(".log").read_text()


def test_command_rejects_mistakes_in_one_line(tmp_path, capsys):
    from evaluation.evaluate import main

    assert main(["--model", "m", "--task", "captioning", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --task: invalid choice: 'captioning'") and len(err.strip().splitlines()) == 1
    assert main(["--model", "m", "--task", "retrieval", "--data", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: `--data`: file not found: {tmp_path / 'missing.json'}\n"


def test_command_evaluates_box_classification_from_a_saved_model(coco_panoptic, saved_model_dir, tmp_path):
    # The model's own box-aware processor is saved beside it (AutoProcessor loads it back).
    from evaluation.evaluate import evaluate_command

    folder = saved_model_dir
    out = tmp_path / "panoptic.json"
    report = evaluate_command(
        [
            "--model",
            str(folder),
            "--task",
            "boxcls",
            "--data",
            str(coco_panoptic),
            "--image-root",
            str(coco_panoptic.parent.parent / "val2017"),
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--template",
            "a photo of a {}.",
            "--crop-scale",
            "1.25",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["results"]["dense"]["num_samples"] == 5 and saved["results"]["crop"]["num_samples"] == 5
    assert saved["settings"]["templates"] == ["a photo of a {}."] and saved["settings"]["crop_scale"] == 1.25
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert "| dense | 5 | 4/4 |" in out.with_suffix(".md").read_text()
