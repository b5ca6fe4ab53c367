"""Assembles a HarmoCLIP model's Hub folder (weights, config, processor, code, model card) and uploads it.

    python -m conversion.publish --repo-id org/harmoclip-vitb16 --model harmoclip-vitb16 \
        [--eval-json eval.json] [--export-repo-id org/harmoclip-vitb16-clip | --export-clip-subfolder] \
        [--revision main] [--private] [--commit-message "..."] [--space-id org/demo --space-dir space] \
        [--dry-run --output-dir hub-folder]

The hosted Hub widget runs no remote code and serves a repository's root only: `--export-repo-id` publishes the
plain-`CLIPModel` export of the global towers as its own repository, with its own card carrying the widget metadata;
the HarmoCLIP card switches the widget off, and the two cards link each other (`--export-clip-subfolder` puts the
export in `clip/` of the model's repository instead, which `from_pretrained(..., subfolder="clip")` loads but the
widget never serves). Nothing here asks questions: no remote code is run, so transformers never prompts.

`--dry-run` only writes the folder(s) (`--output-dir`; the plain-CLIP repo's folder goes to `<output-dir>-clip`, the
Space's to `<output-dir>-space`, its README naming `--repo-id` as its model) and lists the files that would be
committed. Otherwise each folder is uploaded with huggingface_hub: the repository
is created if missing (`create_repo(exist_ok=True)`), a branch given by `--revision` is created if missing, and
the folder goes up in one commit (`upload_folder`). The token comes from the environment (`HF_TOKEN`) or from
`hf auth login`; nothing here reads or stores it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import HFValidationError, filter_repo_objects
from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

from modeling_harmoclip import HarmoCLIPConfig, endpoint_handler
from plumbing.atomic_files import atomic_directory, check_output_dir
from plumbing.command_line import CommandParser, run_command, setup_logging

from .export_clip import export_clip
from .model_card import DEFAULT_TEMPLATE, CardInfo, load_eval_results, render_export_card, render_model_card
from .model_folder import require_model_type

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload HarmoCLIP model"
# The file name Inference Endpoints look for in a repository with a custom handler.
ENDPOINT_HANDLER_FILE = "handler.py"
CLIP_SUBFOLDER = "clip"
# Files of a model folder that belong on the Hub; anything else (optimizer states, logs, pickles) stays behind.
PUBLISHED_SUFFIXES = (".safetensors", ".json", ".py", ".txt", ".model")
NOT_PUBLISHED = re.compile(r"^(README\.md|optimizer.*|scheduler.*|trainer_state\.json|training_args.*|rng_state.*)$")
# git's rules for ref names (`git check-ref-format`), which the Hub applies to branches.
_BAD_REVISION = re.compile(r"(^[/.]|[/.]$|\.\.|//|@\{|\.lock$|/\.|[\x00-\x20\x7f~^:?*\[\\])")


@dataclass(frozen=True)
class HubFolders:
    """The folder(s) assembled for upload."""

    model: Path
    clip: Path | None = None  # the plain-CLIP export for its own repo (`--export-repo-id`)


# ---------------------------------------------------------------------------------------------- checks


def validate_repo_id(repo_id: str, argument: str = "--repo-id") -> str:
    """A Hub repo id with its namespace, `org/name` (Hub naming rules)."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`{argument}` must be 'namespace/name', got {repo_id!r}")
    try:
        hub_validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`{argument}` {repo_id!r} is not a valid Hub repo id: {error}") from None
    return repo_id


def validate_revision(revision: str | None) -> str | None:
    """A branch name git and the Hub accept (None: the default branch)."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision or len(revision) > 255 or _BAD_REVISION.search(revision):
        raise ValueError(f"`--revision` {revision!r} is not a valid branch name")
    return revision


def check_model_folder(model_dir: str | Path) -> Path:
    """A HarmoCLIP folder ready to publish: safetensors weights, code files for `auto_map`, processor files."""
    model_dir = require_model_type(model_dir, HarmoCLIPConfig.model_type, "model")
    if not (model_dir / "model.safetensors").is_file() and not (model_dir / "model.safetensors.index.json").is_file():
        raise ValueError(f"`model`: {model_dir} has no model.safetensors (weights are published as safetensors only)")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if "AutoModel" not in auto_map:
        raise ValueError(
            f"`model`: {model_dir}/config.json has no auto_map.AutoModel (save it with HarmoCLIPModel.save_pretrained)"
        )
    for reference in auto_map.values():
        code_file = model_dir / (reference.split(".")[0] + ".py")
        if not code_file.is_file():
            raise ValueError(f"`model`: {model_dir} lacks {code_file.name}, named in auto_map")
    for task, entry in (config.get("custom_pipelines") or {}).items():
        code_file = model_dir / (str(entry.get("impl", "")).split(".")[0] + ".py")
        if not code_file.is_file():
            raise ValueError(f"`model`: {model_dir} lacks {code_file.name}, the {task!r} pipeline's code")
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"`model`: {model_dir} has no tokenizer files")
    if not any((model_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise ValueError(f"`model`: {model_dir} has no image processor / processor config")
    return model_dir


def files_to_commit(folder: str | Path) -> list[str]:
    """The paths (relative, '/'-separated, sorted) that `upload_folder` would commit from `folder`."""
    folder = Path(folder)
    paths = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS))


# ---------------------------------------------------------------------------------------------- assembling


def copy_model_files(model_dir: Path, destination: Path) -> list[str]:
    """Copies the publishable files (weights, configs, tokenizer, code) of `model_dir`; returns their names."""
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.suffix in PUBLISHED_SUFFIXES and not NOT_PUBLISHED.match(path.name):
            shutil.copy2(path, destination / path.name)
            copied.append(path.name)
    return copied


def write_endpoint_handler(folder: Path) -> Path:
    """`handler.py` with the `EndpointHandler` Hugging Face Inference Endpoints load for custom models
    (`modeling_harmoclip/endpoint_handler.py`): detection, segmentation and region classification as JSON."""
    target = Path(folder) / ENDPOINT_HANDLER_FILE
    shutil.copyfile(Path(endpoint_handler.__file__), target)
    return target


def assemble_hub_folder(
    model_dir: str | Path,
    output_dir: str | Path,
    card: CardInfo,
    *,
    eval_json: str | Path | None = None,
    export_clip_subfolder: bool = False,
    clip_output_dir: str | Path | None = None,
    export_repo_id: str | None = None,
    template_path: str | Path = DEFAULT_TEMPLATE,
    overwrite: bool = False,
) -> HubFolders:
    """Writes the Hub folder of `model_dir` to `output_dir` (and the plain-CLIP repo's folder to `clip_output_dir`,
    with the card of `export_repo_id`).

    The model card is rendered from `template_path` with the evaluation results of `eval_json` (if any). With
    `export_clip_subfolder`, the plain-CLIP export goes into `clip/` of the same folder.
    """
    if (clip_output_dir is None) != (export_repo_id is None):
        raise ValueError("`clip_output_dir` and `export_repo_id` go together")
    model_dir = check_model_folder(model_dir)
    eval_rows = load_eval_results(eval_json)
    check_output_dir(output_dir, overwrite)
    if clip_output_dir is not None:
        check_output_dir(clip_output_dir, overwrite)
    config = HarmoCLIPConfig.from_pretrained(model_dir)
    card_text = render_model_card(config, card, eval_rows, template_path)
    with atomic_directory(output_dir, overwrite) as staging:
        copy_model_files(model_dir, staging)
        write_endpoint_handler(staging)
        (staging / "README.md").write_text(card_text, encoding="utf-8")
        if export_clip_subfolder:
            export_clip(model_dir, staging / CLIP_SUBFOLDER)
    clip_folder = None
    if clip_output_dir is not None:
        export_card = render_export_card(config, card, export_repo_id, eval_rows)
        export_clip(model_dir, clip_output_dir, overwrite=overwrite, readme_text=export_card)
        clip_folder = Path(clip_output_dir)
    return HubFolders(model=Path(output_dir), clip=clip_folder)


def space_sdk(space_dir: Path) -> str:
    """The Space's SDK from its README metadata (`sdk:`), gradio by default."""
    readme = space_dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if text.startswith("---"):
            metadata = yaml.safe_load(text.split("---", 2)[1]) or {}
            if isinstance(metadata, dict) and metadata.get("sdk"):
                return str(metadata["sdk"])
    return "gradio"


def prepare_space_folder(space_dir: Path, target: Path, model_repo_id: str, overwrite: bool = False) -> Path:
    """Copies the Space folder to `target` with its README metadata naming `model_repo_id` first under `models:`
    (the model the Space loads by default, and the link the Hub shows between the two)."""
    from huggingface_hub import metadata_load, metadata_save

    with atomic_directory(target, overwrite) as staging:
        shutil.copytree(
            space_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".gradio")
        )
        readme = staging / "README.md"
        metadata = (metadata_load(readme) or {}) if readme.is_file() else {}
        metadata["models"] = [model_repo_id] + [
            model for model in metadata.get("models") or [] if model != model_repo_id
        ]
        if not readme.is_file():
            readme.write_text("# HarmoCLIP demo\n", encoding="utf-8")
        metadata_save(readme, metadata)
    return target


# ---------------------------------------------------------------------------------------------- uploading


def upload_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    sdk: str | None = None,
    api: HfApi | None = None,
) -> Any:
    """Uploads `folder` to the Hub in one commit; returns huggingface_hub's `CommitInfo`.

    `api` defaults to `HfApi()`, which takes the token from `HF_TOKEN` or the stored login.
    """
    api = api if api is not None else HfApi()
    extra = {"space_sdk": sdk or "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True, **extra)
    if revision is not None and revision != "main":
        api.create_branch(repo_id=repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision, commit_message=commit_message
    )


def check_publish_arguments(
    repo_id: str,
    model_dir: str | Path,
    revision: str | None,
    commit_message: str,
    dry_run: bool,
    output_dir: str | Path | None,
    export_clip_subfolder: bool,
    export_repo_id: str | None,
    space_id: str | None,
    space_dir: str | Path | None,
) -> None:
    """`publish`'s arguments checked before anything is written or sent: a one-line error naming the bad one."""
    validate_repo_id(repo_id, "--repo-id")
    validate_revision(revision)
    if export_clip_subfolder and export_repo_id is not None:
        raise ValueError("`--export-clip-subfolder` and `--export-repo-id` are alternatives: give one")
    if export_repo_id is not None:
        validate_repo_id(export_repo_id, "--export-repo-id")
        if export_repo_id == repo_id:
            raise ValueError(f"`--export-repo-id` must differ from `--repo-id`, got {export_repo_id!r} for both")
    if (space_id is None) != (space_dir is None):
        raise ValueError("`--space-id` and `--space-dir` go together")
    if space_id is not None:
        validate_repo_id(space_id, "--space-id")
        space_dir = Path(space_dir)
        if not space_dir.is_dir() or not any(space_dir.iterdir()):
            raise ValueError(f"`--space-dir`: {space_dir} is not a folder with files")
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError("`--commit-message` must not be empty")
    if dry_run and output_dir is None:
        raise ValueError("`--output-dir` is required with `--dry-run` (the folder to write)")
    check_model_folder(model_dir)


def card_for_publish(
    card: CardInfo | None, repo_id: str, export_clip_subfolder: bool, export_repo_id: str | None
) -> CardInfo:
    """The model card's facts for `repo_id` (default `CardInfo(repo_id=repo_id)`), naming the CLIP export if any."""
    card = card or CardInfo(repo_id=repo_id)
    if card.repo_id != repo_id:
        raise ValueError(f"`card.repo_id` {card.repo_id!r} differs from `--repo-id` {repo_id!r}")
    if card.clip_export is None and (export_clip_subfolder or export_repo_id):
        card = CardInfo(**{**card.__dict__, "clip_export": "subfolder" if export_clip_subfolder else export_repo_id})
    return card


def publish(
    repo_id: str,
    model_dir: str | Path,
    *,
    eval_json: str | Path | None = None,
    dry_run: bool = False,
    output_dir: str | Path | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    export_clip_subfolder: bool = False,
    export_repo_id: str | None = None,
    space_id: str | None = None,
    space_dir: str | Path | None = None,
    card: CardInfo | None = None,
    overwrite: bool = False,
    api: HfApi | None = None,
) -> dict[str, list[str]]:
    """Assembles and (unless `dry_run`) uploads; returns {repo id: files committed (or that would be)}.

    All arguments are checked before anything is written or sent.
    """
    check_publish_arguments(
        repo_id,
        model_dir,
        revision,
        commit_message,
        dry_run,
        output_dir,
        export_clip_subfolder,
        export_repo_id,
        space_id,
        space_dir,
    )
    card = card_for_publish(card, repo_id, export_clip_subfolder, export_repo_id)

    with tempfile.TemporaryDirectory(prefix="harmoclip-publish-") as scratch:
        target = Path(output_dir) if output_dir is not None else Path(scratch) / "model"
        clip_target = None
        if export_repo_id is not None:
            clip_target = Path(f"{target}-clip") if output_dir is not None else Path(scratch) / "clip"
        folders = assemble_hub_folder(
            model_dir,
            target,
            card,
            eval_json=eval_json,
            export_clip_subfolder=export_clip_subfolder,
            clip_output_dir=clip_target,
            export_repo_id=export_repo_id,
            overwrite=overwrite,
        )
        uploads: list[tuple[str, Path, str]] = [(repo_id, folders.model, "model")]
        if folders.clip is not None:
            uploads.append((export_repo_id, folders.clip, "model"))
        if space_id is not None:
            space_target = Path(f"{target}-space") if output_dir is not None else Path(scratch) / "space"
            uploads.append((space_id, prepare_space_folder(Path(space_dir), space_target, repo_id, overwrite), "space"))
        committed = {repo: files_to_commit(folder) for repo, folder, _ in uploads}
        if dry_run:
            return committed
        for repo, folder, repo_type in uploads:
            sdk = space_sdk(folder) if repo_type == "space" else None
            info = upload_folder_to_hub(
                folder,
                repo,
                repo_type=repo_type,
                revision=revision,
                private=private,
                commit_message=commit_message,
                sdk=sdk,
                api=api,
            )
            logger.info("uploaded %s (%s): %s", repo, repo_type, getattr(info, "commit_url", info))
        return committed


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="Hub model repo, namespace/name")
    parser.add_argument("--model", required=True, type=Path, help="HarmoCLIP folder (save_pretrained + processor)")
    parser.add_argument("--eval-json", type=Path, help="evaluation results (schema: conversion/model_card.py)")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder(s) and list the files")
    parser.add_argument("--output-dir", type=Path, help="where to write the Hub folder (required with --dry-run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--revision", help="branch to commit to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument("--log-file", type=Path, help="also write the log to this file")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument(
        "--export-repo-id",
        "--clip-repo-id",
        dest="export_repo_id",
        help="also publish the plain-CLIP export as this repo, with the widget (e.g. org/harmoclip-vitb16-clip)",
    )
    clip.add_argument(
        "--export-clip-subfolder",
        action="store_true",
        help="add the plain-CLIP export in clip/ (loadable with subfolder='clip'; the widget does not serve it)",
    )
    parser.add_argument("--space-id", help="also upload --space-dir to this Space")
    parser.add_argument("--space-dir", type=Path, help="the Space's folder")
    card = parser.add_argument_group("model card")
    card.add_argument("--license", default="apache-2.0")
    card.add_argument("--base-model", help="Hub id of the starting CLIP weights")
    card.add_argument("--datasets", nargs="*", default=[], help="Hub ids of the training data sets")
    card.add_argument("--tags", nargs="*", help="card tags (default: clip, harmoclip, ...)")
    return parser


def main(argv: list[str] | None = None, api: HfApi | None = None) -> int:
    """The `harmoclip-publish` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> str:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_file)
        card_fields: dict[str, Any] = {
            "license": args.license,
            "base_model": args.base_model,
            "datasets": tuple(args.datasets),
        }
        if args.tags:
            card_fields["tags"] = tuple(args.tags)
        committed = publish(
            args.repo_id,
            args.model,
            eval_json=args.eval_json,
            dry_run=args.dry_run,
            output_dir=args.output_dir,
            revision=args.revision,
            private=args.private,
            commit_message=args.commit_message,
            export_clip_subfolder=args.export_clip_subfolder,
            export_repo_id=args.export_repo_id,
            space_id=args.space_id,
            space_dir=args.space_dir,
            card=CardInfo(repo_id=args.repo_id, **card_fields),
            overwrite=args.overwrite,
            api=api,
        )
        verb = "would commit" if args.dry_run else "committed"
        return "\n".join(f"{repo}: {verb} {len(files)} files: {', '.join(files)}" for repo, files in committed.items())

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
