"""The harmony benchmark, end to end at its --quick size: every row trained from one pre-trained model, evaluated,
reported (JSON, markdown, PNG), and reused when the command runs again. Which configuration wins is not tested."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from benchmarks.harmony import (
    CONFIGURATION_KEYS,
    FINETUNE_CONFIGURATIONS,
    PRETRAINED,
    QUICK_SETTINGS,
    HarmonySettings,
    _train_config,
    fingerprint,
    main,
    run_harmony,
)

FIGURES = ("i2t_R@1", "t2i_R@1", "mean_R@1", "box_top1_dense", "box_top1_crop")


def weights(row: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(row["model"]) / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("harmony")
    return out, run_harmony(["--quick", "--out", str(out)])


def test_every_row_is_trained_from_the_one_pretrained_model(first_run) -> None:
    out, report = first_run
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows) == [PRETRAINED.key, *CONFIGURATION_KEYS]
    assert sorted(path.name.split("-")[0] for path in (out / "runs").iterdir()).count("pretrained") == 1
    pretrained = rows[PRETRAINED.key]
    assert pretrained["init_from"] is None and pretrained["train_config"]["loss_lrc_weight"] == 0
    for configuration in FINETUNE_CONFIGURATIONS:
        row = rows[configuration.key]
        assert row["init_from"] == pretrained["model"], configuration.key
        assert row["loss_weights"] == {"gc": configuration.gc, "lrc": configuration.lrc, "gr": configuration.gr}
        assert row["train_config"]["max_steps"] == QUICK_SETTINGS["finetune_steps"]
    # GR alone trains the vision tower only: the text tower is the pre-trained one, bit for bit, and vision moved.
    start, tuned = weights(pretrained), weights(rows["gr"])
    text = [name for name in start if name.startswith("text_model.")]
    vision = [name for name in start if name.startswith("vision_model.encoder.")]
    assert text and vision
    assert all(torch.equal(start[name], tuned[name]) for name in text)
    assert any(not torch.equal(start[name], tuned[name]) for name in vision)


def test_outputs_hold_every_row_and_figures_in_range(first_run) -> None:
    out, report = first_run
    saved = json.loads((out / "harmony.json").read_text())
    assert saved["command"] == f"python -m benchmarks.harmony --quick --out {out}"
    assert saved["settings"]["finetune_steps"] == QUICK_SETTINGS["finetune_steps"]
    assert [row["key"] for row in saved["rows"]] == [PRETRAINED.key, *CONFIGURATION_KEYS]
    for row in saved["rows"]:
        for name in FIGURES:
            assert 0.0 <= row["figures"][name] <= 100.0, (row["key"], name)
        assert (Path(row["folder"]) / "eval.json").is_file() and (Path(row["folder"]) / "row.json").is_file()
        assert not (Path(row["folder"]) / "checkpoints").exists()
    assert 0 < saved["chance"]["R@1"] <= 100 and 0 < saved["chance"]["box_top1"] <= 100
    assert saved["environment"]["torch_threads"] >= 1 and len(saved["environment"]["load_average_at_end"]) == 3
    table = (out / "harmony.md").read_text()
    for row in saved["rows"]:
        assert f"| {row['label']} | {row['losses']} | {row['figures']['i2t_R@1']:.1f} |" in table
    assert saved["command"] in table
    with Image.open(out / "harmony.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300
    assert "command: python -m benchmarks.harmony --quick" in (out / "harmony.log").read_text()


def test_rerun_reuses_finished_rows_and_retrains_only_what_changed(first_run) -> None:
    out, report = first_run
    before = {row["key"]: (Path(row["model"]) / "model.safetensors").stat().st_mtime_ns for row in report["rows"]}

    again = run_harmony(["--quick", "--out", str(out)])
    assert all(row["reused"] for row in again["rows"])
    assert [row["figures"] for row in again["rows"]] == [row["figures"] for row in report["rows"]]
    assert {row["key"]: (Path(row["model"]) / "model.safetensors").stat().st_mtime_ns for row in again["rows"]} == before

    changed = run_harmony(["--quick", "--out", str(out), "--finetune-steps", "1", "--configurations", "gc"])
    pretrained, tuned = changed["rows"]
    assert pretrained["reused"] and pretrained["model"] == report["rows"][0]["model"]
    assert not tuned["reused"] and tuned["train_config"]["max_steps"] == 1 and tuned["init_from"] == pretrained["model"]
    assert tuned["folder"] != report["rows"][1]["folder"] and Path(report["rows"][1]["folder"]).is_dir()


def test_fingerprint_follows_settings_not_places(tmp_path: Path) -> None:
    settings = HarmonySettings(**QUICK_SETTINGS)
    gc = FINETUNE_CONFIGURATIONS[0]
    here = _train_config(settings, tmp_path / "a", gc, "finetune", tmp_path / "a" / "model", tmp_path / "a" / "run")
    there = _train_config(settings, tmp_path / "b", gc, "finetune", tmp_path / "b" / "model", tmp_path / "b" / "run")
    assert fingerprint(here, "p") == fingerprint(there, "p")
    assert fingerprint(here, "p") != fingerprint(here, "other pre-trained model")
    longer = _train_config(dataclasses.replace(settings, finetune_steps=3), tmp_path, gc, "finetune", None, tmp_path)
    assert fingerprint(longer, "p") != fingerprint(here, "p")
    assert fingerprint(_train_config(settings, tmp_path, FINETUNE_CONFIGURATIONS[1], "finetune", None, tmp_path), "p") != fingerprint(here, "p")


def test_bad_settings_are_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="configurations"):
        HarmonySettings(configurations=("gc", "lrc-only"))
    with pytest.raises(ValueError, match="finetune_batch_size"):
        HarmonySettings(synthetic_num_train=8, finetune_batch_size=16, pretrain_batch_size=8)
    config = tmp_path / "settings.yaml"
    config.write_text("finetune_steps: 5\nlearning_rate: 0.1\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "learning_rate" in err and len(err.strip().splitlines()) == 1
    assert main(["--finetune-steps", "many"]) == 2
    assert capsys.readouterr().err == "error: argument --finetune-steps/--finetune_steps: invalid int value: 'many'\n"
    assert not (tmp_path / "out").exists()
