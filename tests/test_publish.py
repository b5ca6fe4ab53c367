"""Publishing: the Hub folder (loaded from a fresh process), the model card, the checks, and the upload calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import run_isolated, tiny_harmoclip_model
from conversion.model_card import NOT_EVALUATED, CardInfo, parse_eval_results
from conversion.processor_files import make_image_processor, save_harmoclip_processor
from conversion.publish import files_to_commit, main, publish, validate_repo_id, validate_revision

EVAL_RESULTS = {
    "retrieval": {"dataset": "Flickr30k", "split": "test", "i2t_R@1": 81.25, "t2i_R@1": 64.5},
    "box_classification": [{"dataset": "COCO", "split": "val2017", "top1": 47.125, "top5": 73.0}],
}
MODEL_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    # The remote code, one file per concept, as transformers' model folders.
    "configuration_harmoclip.py",
    "modeling_harmoclip.py",
    "losses.py",
    "image_processing_harmoclip.py",
    "processing_harmoclip.py",
    "pipeline_harmoclip.py",
    "handler.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
}


class RecordingHubApi:
    """Stands in for `HfApi` at the network boundary: records each call and the files an upload would send."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", {**kwargs, "files": files_to_commit(kwargs["folder_path"])}))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A saved tiny model whose recipe differs from the shipped one: the card must show the saved config's."""
    folder = tmp_path / "harmoclip"
    tiny_harmoclip_model(loss_lrc_weight=1.0, loss_rla_weight=0.0, region_text_grad=True).save_pretrained(folder)
    save_harmoclip_processor(folder, tiny_tokenizer, make_image_processor(32))
    (folder / "optimizer.pt").write_bytes(b"training state, not for the Hub")
    return folder


@pytest.fixture
def eval_json(tmp_path) -> Path:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(EVAL_RESULTS))
    return path


ISOLATED_LOAD = """
import json, sys, torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, CLIPModel
folder = sys.argv[1] if len(sys.argv) > 1 else {folder!r}
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(text=["a photo of a cat", "a red shirt"], images=[Image.new("RGB", (40, 36), (250, 20, 20))], return_tensors="pt", padding=True)
clip = CLIPModel.from_pretrained(folder, subfolder="clip").eval()
with torch.no_grad():
    output = model(**inputs)
    clip_output = clip(**inputs)
print(json.dumps({{
    "model_class": type(model).__name__, "module": type(model).__module__,
    "pixel_values": inputs["pixel_values"].tolist(), "input_ids": inputs["input_ids"].tolist(),
    "attention_mask": inputs["attention_mask"].tolist(),
    "image_embeds": output.image_embeds.tolist(), "text_embeds": output.text_embeds.tolist(),
    "clip_image_embeds": clip_output.image_embeds.tolist(), "clip_text_embeds": clip_output.text_embeds.tolist(),
}}))
"""


def test_dry_run_folder_loads_from_a_fresh_process(model_dir, eval_json, tmp_path, tiny_model):
    out = tmp_path / "hub"
    committed = publish(
        "org/harmoclip-tiny", model_dir, eval_json=eval_json, dry_run=True, output_dir=out, export_clip_subfolder=True
    )

    files = committed["org/harmoclip-tiny"]
    assert files == files_to_commit(out)
    assert set(files) >= MODEL_FILES and {"clip/config.json", "clip/model.safetensors", "clip/tokenizer.json"} <= set(
        files
    )
    assert "optimizer.pt" not in files and not any(name.endswith(".py") for name in files if name.startswith("clip/"))

    result = run_isolated(
        ISOLATED_LOAD.format(folder=str(out)), cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")}
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["model_class"] == "HarmoCLIPModel" and loaded["module"].startswith("transformers_modules")
    with torch.no_grad():
        expected = tiny_model(
            input_ids=torch.tensor(loaded["input_ids"]),
            attention_mask=torch.tensor(loaded["attention_mask"]),
            pixel_values=torch.tensor(loaded["pixel_values"]),
        )
    for key in ("image_embeds", "text_embeds"):
        torch.testing.assert_close(torch.tensor(loaded[key]), getattr(expected, key), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(loaded[f"clip_{key}"]), getattr(expected, key), atol=1e-5, rtol=0)


def test_model_card_carries_metadata_and_evaluation(model_dir, eval_json, tmp_path):
    card_info = CardInfo(
        repo_id="org/harmoclip-tiny",
        license="mit",
        base_model="openai/clip-vit-base-patch16",
        datasets=("detection-datasets/coco",),
    )
    publish(
        "org/harmoclip-tiny",
        model_dir,
        eval_json=eval_json,
        dry_run=True,
        output_dir=tmp_path / "hub",
        card=card_info,
        export_repo_id="org/harmoclip-tiny-clip",
    )

    card = ModelCard.load(tmp_path / "hub" / "README.md")
    data = card.data.to_dict()
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == (
        "transformers",
        "zero-shot-image-classification",
        "mit",
    )
    assert data["base_model"] == "openai/clip-vit-base-patch16" and data["datasets"] == ["detection-datasets/coco"]
    assert "harmoclip" in data["tags"]
    assert "widget" not in data and data["inference"] is False  # the widget cannot run remote code: switched off here
    assert "{{" not in card.text and "}}" not in card.text
    assert "| Image-text retrieval | Flickr30k | test | i2t_R@1 | 81.25 |" in card.text
    assert "| Box classification | COCO | val2017 | top1 | 47.12 |" in card.text
    assert NOT_EVALUATED not in card.text
    assert "arXiv" in card.text and "2511.22594" in card.text
    assert 'AutoModel.from_pretrained("org/harmoclip-tiny", trust_remote_code=True)' in card.text
    assert 'CLIPModel.from_pretrained("org/harmoclip-tiny-clip")' in card.text
    assert "| Dense features (`dense_mode`) | `value` |" in card.text
    assert "| Region pooling (`region_pooling`) | `normalize_then_pool` |" in card.text
    assert "| Region temperature (`region_logit_scale_mode`) | `shared` |" in card.text
    assert "| Loss weights GC / LRC / RLA / GR | 1 / 1 / 0 / 1 |" in card.text  # the saved model's config
    assert "| Region terms train the text tower (`region_text_grad`) | yes |" in card.text
    assert "| Region temperature at the start of training (`region_logit_scale_init_value`) | unused" in card.text
    assert "| Same-category negatives left out of LRC / RLA (`lrc_mask_categories`) | yes |" in card.text
    assert "[org/harmoclip-tiny-clip](https://huggingface.co/org/harmoclip-tiny-clip)" in card.text  # links the export

    # The export's own repository: its own card, with the widget, linking back; only the global tasks' figures.
    clip_card = ModelCard.load(tmp_path / "hub-clip" / "README.md")
    clip_data = clip_card.data.to_dict()
    assert clip_data["pipeline_tag"] == "zero-shot-image-classification" and clip_data["library_name"] == "transformers"
    assert (
        clip_data["widget"][0]["candidate_labels"] == "playing music, playing sports" and "inference" not in clip_data
    )
    assert clip_data["base_model"] == "org/harmoclip-tiny" and clip_data["license"] == "mit"
    assert "region-classification" not in clip_data["tags"]
    assert "[org/harmoclip-tiny](https://huggingface.co/org/harmoclip-tiny)" in clip_card.text  # links back
    assert 'pipeline("zero-shot-image-classification", model="org/harmoclip-tiny-clip")' in clip_card.text
    assert "trust_remote_code" not in clip_card.text and "{{" not in clip_card.text
    assert "| Image-text retrieval | Flickr30k | test | i2t_R@1 | 81.25 |" in clip_card.text
    assert "Box classification" not in clip_card.text
    clip_config = json.loads((tmp_path / "hub-clip" / "config.json").read_text())
    assert clip_config["model_type"] == "clip" and "auto_map" not in clip_config


def test_subfolder_export_says_the_widget_does_not_serve_it(model_dir, tmp_path):
    publish("org/harmoclip-tiny", model_dir, dry_run=True, output_dir=tmp_path / "hub", export_clip_subfolder=True)
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    assert card.data.to_dict()["inference"] is False and "widget" not in card.data.to_dict()
    assert 'CLIPModel.from_pretrained("org/harmoclip-tiny", subfolder="clip")' in card.text
    assert "does not run it" in card.text
    assert not (tmp_path / "hub-clip").exists()


def test_export_repo_must_be_another_repo(model_dir, tmp_path):
    with pytest.raises(ValueError, match="`--export-repo-id` must differ from `--repo-id`"):
        publish("org/x", model_dir, dry_run=True, output_dir=tmp_path / "hub", export_repo_id="org/x")
    with pytest.raises(ValueError, match="`--export-repo-id` 'org/a b' is not a valid Hub repo id"):
        publish("org/x", model_dir, dry_run=True, output_dir=tmp_path / "hub", export_repo_id="org/a b")
    assert not (tmp_path / "hub").exists()


def test_publishing_never_prompts_on_a_terminal(model_dir, tmp_path):
    """On a terminal transformers asks "Do you wish to run the custom code? [y/N]" when code loads a folder with an
    `auto_map` without saying whether to trust it; publishing must never stop there."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    from conftest import ROOT

    command = [
        sys.executable,
        "-m",
        "conversion.publish",
        "--repo-id",
        "org/harmoclip-tiny",
        "--model",
        str(model_dir),
        "--export-repo-id",
        "org/harmoclip-tiny-clip",
        "--dry-run",
        "--output-dir",
        str(tmp_path / "hub"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    parent, child = pty.openpty()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    output, deadline = b"", time.monotonic() + 300
    while process.poll() is None or select.select([parent], [], [], 0)[0]:
        if select.select([parent], [], [], 0.5)[0]:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            output += chunk
        if b"[y/N]" in output or time.monotonic() > deadline:
            process.kill()
            break
    process.wait()
    os.close(parent)
    text = output.decode(errors="replace")
    assert "[y/N]" not in text, text
    assert process.returncode == 0, text
    assert "org/harmoclip-tiny-clip: would commit" in text


def test_model_card_without_evaluation_says_not_evaluated(model_dir, tmp_path):
    publish("org/harmoclip-tiny", model_dir, dry_run=True, output_dir=tmp_path / "hub")

    card = ModelCard.load(tmp_path / "hub" / "README.md")
    assert NOT_EVALUATED in card.text and "| Metric |" not in card.text
    assert card.data.base_model is None and "export_clip" in card.text


def test_card_reads_the_reports_of_the_evaluation_code(model_dir, tmp_path, tiny_model, tiny_tokenizer):
    """The end-of-training `eval.json` ({"tasks": {task: report}}) as `evaluation/evaluate.py` writes it."""
    from transformers import AutoProcessor

    from evaluation.evaluate import run_evaluation
    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "shapes", SyntheticSettings(num_train=0, num_val=6, image_size=32))
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    reports = {
        task: run_evaluation(tiny_model, processor, task, data / "val.jsonl", split=None)
        for task in ("retrieval", "boxcls")
    }
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"tasks": reports}))
    publish("org/harmoclip-tiny", model_dir, eval_json=eval_json, dry_run=True, output_dir=tmp_path / "hub")
    text = ModelCard.load(tmp_path / "hub" / "README.md").text
    i2t = reports["retrieval"]["results"]["i2t_R@1"]
    assert f"| Image-text retrieval | val.jsonl |  | i2t_R@1 | {i2t:.2f} |" in text
    dense = reports["boxcls"]["results"]["dense"]["top1"]
    crop = reports["boxcls"]["results"]["crop"]["top1"]
    assert (
        f"| Box classification | val.jsonl |  | top1 (region features of one image pass (RoIAlign)) | {dense:.2f} |"
        in text
    )
    assert f"| Box classification | val.jsonl |  | top1 (crop-and-encode baseline) | {crop:.2f} |" in text


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (
            {"retrieval": {"dataset": "Flickr30k", "i2t_R@1": "81"}},
            r"\['retrieval'\]\['i2t_R@1'\] must be a finite number",
        ),
        ({"box_classification": [{"top1": 40.0}]}, r"\['box_classification'\]\[0\] needs a 'dataset'"),
        ({"retrieval": {"dataset": "Flickr30k"}}, "has no metric"),
        ({"retrieval": {"dataset": "COCO", "t2i_R@1": float("nan")}}, "finite number"),
        ([1, 2], "top level must be an object"),
    ],
)
def test_bad_evaluation_results_are_refused(results, message):
    with pytest.raises(ValueError, match=message):
        parse_eval_results(results)


@pytest.mark.parametrize("repo_id", ["harmoclip", "org/sub/name", "org/na me", "org/name--", "", "-org/name"])
def test_bad_repo_ids_are_refused_before_anything_is_written(model_dir, tmp_path, repo_id):
    api = RecordingHubApi()
    with pytest.raises(ValueError, match="--repo-id"):
        publish(repo_id, model_dir, output_dir=tmp_path / "hub", api=api)
    assert not (tmp_path / "hub").exists() and api.calls == []


@pytest.mark.parametrize("revision", ["bad..name", "with space", "/leading", "trailing/", "x.lock", "a:b", ""])
def test_bad_revisions_are_refused(revision):
    with pytest.raises(ValueError, match="--revision"):
        validate_revision(revision)


def test_good_ids_and_revisions_pass():
    assert validate_repo_id("my-org/harmoclip-vitb16.v1") == "my-org/harmoclip-vitb16.v1"
    assert validate_revision("release/v1.0") == "release/v1.0" and validate_revision(None) is None


def test_upload_calls_hub_with_one_commit_per_repo(model_dir, tmp_path):
    space = tmp_path / "space"
    space.mkdir()
    (space / "app.py").write_text("print('demo')\n")
    (space / "README.md").write_text("---\ntitle: HarmoCLIP demo\nsdk: gradio\nsdk_version: 5.0.0\n---\n")
    api = RecordingHubApi()

    committed = publish(
        "org/harmoclip-tiny",
        model_dir,
        revision="v1",
        private=True,
        commit_message="Release v1",
        export_repo_id="org/harmoclip-tiny-clip",
        space_id="org/harmoclip-demo",
        space_dir=space,
        api=api,
    )

    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"] * 3
    uploads = [kwargs for name, kwargs in api.calls if name == "upload_folder"]
    assert [u["repo_id"] for u in uploads] == ["org/harmoclip-tiny", "org/harmoclip-tiny-clip", "org/harmoclip-demo"]
    assert [u["repo_type"] for u in uploads] == ["model", "model", "space"]
    assert all(u["revision"] == "v1" and u["commit_message"] == "Release v1" for u in uploads)
    assert set(uploads[0]["files"]) == MODEL_FILES and uploads[0]["files"] == committed["org/harmoclip-tiny"]
    assert "README.md" in uploads[1]["files"] and not any(name.endswith(".py") for name in uploads[1]["files"])
    assert uploads[2]["files"] == ["README.md", "app.py"]
    creates = [kwargs for name, kwargs in api.calls if name == "create_repo"]
    assert all(c["exist_ok"] and c["private"] for c in creates)
    assert creates[2]["repo_type"] == "space" and creates[2]["space_sdk"] == "gradio" and "space_sdk" not in creates[0]


def test_dry_run_writes_the_project_space_naming_the_model(model_dir, tmp_path):
    """The project's own Space folder, staged for upload with the published model as its default."""
    from huggingface_hub import metadata_load

    from conftest import ROOT

    committed = publish(
        "org/harmoclip-tiny",
        model_dir,
        dry_run=True,
        output_dir=tmp_path / "hub",
        space_id="org/harmoclip-demo",
        space_dir=ROOT / "space",
    )
    staged = tmp_path / "hub-space"
    assert metadata_load(staged / "README.md")["models"][0] == "org/harmoclip-tiny"
    assert metadata_load(staged / "README.md")["sdk"] == "gradio"
    assert {"app.py", "requirements.txt", "README.md"} <= set(committed["org/harmoclip-demo"])
    assert not any("__pycache__" in name for name in committed["org/harmoclip-demo"])
    assert (staged / "app.py").read_text() == (ROOT / "space" / "app.py").read_text()
    assert metadata_load(ROOT / "space" / "README.md")["models"] == ["org/harmoclip-vitb16"]  # the source is untouched


def test_upload_to_default_branch_creates_no_branch(model_dir):
    api = RecordingHubApi()
    publish("org/harmoclip-tiny", model_dir, api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[1][1]["revision"] is None


def test_model_folder_and_option_checks(model_dir, tmp_path, tiny_tokenizer):
    (model_dir / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors"):
        publish("org/x", model_dir, dry_run=True, output_dir=tmp_path / "hub")
    (tmp_path / "elsewhere.safetensors").rename(model_dir / "model.safetensors")
    (model_dir / "pipeline_harmoclip.py").rename(tmp_path / "pipeline_harmoclip.py")
    with pytest.raises(ValueError, match=r"lacks pipeline_harmoclip.py, the '[a-z-]+' pipeline's code"):
        publish("org/x", model_dir, dry_run=True, output_dir=tmp_path / "hub")
    (tmp_path / "pipeline_harmoclip.py").rename(model_dir / "pipeline_harmoclip.py")
    with pytest.raises(ValueError, match="alternatives"):
        publish("org/x", model_dir, export_clip_subfolder=True, export_repo_id="org/y")
    with pytest.raises(ValueError, match="go together"):
        publish("org/x", model_dir, space_id="org/space")
    with pytest.raises(ValueError, match="--output-dir` is required"):
        publish("org/x", model_dir, dry_run=True)
    (tmp_path / "hub").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish("org/x", model_dir, dry_run=True, output_dir=tmp_path / "hub")


def test_command_line_dry_run(model_dir, eval_json, tmp_path, capsys):
    args = [
        "--repo-id",
        "org/harmoclip-tiny",
        "--model",
        str(model_dir),
        "--eval-json",
        str(eval_json),
        "--dry-run",
        "--output-dir",
        str(tmp_path / "hub"),
        "--base-model",
        "openai/clip-vit-base-patch16",
        "--datasets",
        "detection-datasets/coco",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "org/harmoclip-tiny: would commit" in out and "model.safetensors" in out
    assert ModelCard.load(tmp_path / "hub" / "README.md").data.base_model == "openai/clip-vit-base-patch16"
    assert (
        main(["--repo-id", "not-a-repo", "--model", str(model_dir), "--dry-run", "--output-dir", str(tmp_path / "x")])
        == 1
    )
    assert "namespace/name" in capsys.readouterr().err
