"""Reproduction kit: OpenAI's CLIP ViT-B/16 under the reference protocols, beside the published figures.

    python -m scripts.reproduce --workdir repro [--flickr30k-images DIR] [--finetuned MODEL | --train] [--device cuda]

Steps (each skipped when its output exists, so an interrupted run continues):
1. download OpenAI's ViT-B-16.pt (sha256 checked), COCO val2017 images + panoptic annotations, COCO val2014 images
   (the Karpathy COCO test images) and Karpathy's split files; Flickr30k's images are not freely downloadable: give
   their folder with --flickr30k-images (without it the Flickr30k rows are skipped);
2. convert the checkpoint (`conversion.convert_clip --source openai --region-mode`);
3. evaluate: box classification under `--protocol fineclip` and `--protocol clipself` (class embeddings computed once
   from the pre-trained model's text tower and reused for every model, as FineCLIP does), retrieval on the Flickr30k
   1k and COCO 5k Karpathy test splits;
4. print our figures beside `scripts/published_figures.json`, flagging differences beyond its tolerance
   (`comparison.md` / `.json`); exit status 1 if any figure differs.
With --finetuned MODEL (or --train, which runs `configs/vitb16_finetune.yaml` first) steps 3-4 also run for that model.
Without internet the download step stops with one line naming the URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from evaluation.evaluate import evaluate_command
from plumbing.atomic_files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "scripts" / "published_figures.json"
NO_COMPARABLE_FIGURE = "no comparable published figure known"
BPE_PATH = ROOT / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
CLIP_URL = f"https://openaipublic.azureedge.net/clip/models/{CLIP_SHA256}/ViT-B-16.pt"
COCO = "http://images.cocodataset.org"


class DownloadError(RuntimeError):
    """A download that could not complete (no network, bad URL, wrong checksum)."""


@dataclass(frozen=True)
class Download:
    """`url` saved to `downloads/<file>`; a zip is extracted into `extract_to` (relative to the work folder);
    `done` is the path whose presence means the step already ran."""

    url: str
    file: str
    done: str
    extract_to: str | None = None
    sha256: str | None = None


DOWNLOADS = (
    Download(CLIP_URL, "ViT-B-16.pt", "downloads/ViT-B-16.pt", sha256=CLIP_SHA256),
    Download(f"{COCO}/zips/val2017.zip", "val2017.zip", "data/coco/val2017", "data/coco"),
    Download(
        f"{COCO}/annotations/panoptic_annotations_trainval2017.zip",
        "panoptic_annotations_trainval2017.zip",
        "data/coco/annotations/panoptic_val2017.json",
        "data/coco",
    ),
    Download(f"{COCO}/zips/val2014.zip", "val2014.zip", "data/coco/val2014", "data/coco"),
    Download(
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
        "caption_datasets.zip",
        "data/karpathy/dataset_coco.json",
        "data/karpathy",
    ),
)
TRAIN_DOWNLOADS = (
    Download(f"{COCO}/zips/train2017.zip", "train2017.zip", "data/coco/train2017", "data/coco"),
    Download(
        f"{COCO}/annotations/annotations_trainval2017.zip",
        "annotations_trainval2017.zip",
        "data/coco/annotations/captions_train2017.json",
        "data/coco",
    ),
)


# ---------------------------------------------------------------------------------------------------- downloads


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Streams `url` to `dest` through `dest.partial` (renamed when complete and, with `sha256`, verified)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as handle:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                digest.update(chunk)
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"cannot download {url}: {reason} (this step needs internet; or place the file at {dest})"
        ) from None
    if sha256 is not None and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 {digest.hexdigest()} differs from the expected {sha256}")
    partial.replace(dest)
    return dest


def extract(archive: Path, target: Path) -> None:
    """Extracts `archive` into `target` through a staging folder, so a failed extraction leaves nothing behind;
    a nested `annotations/panoptic_val2017.zip` (COCO ships the PNGs so) is extracted beside itself."""
    staging = target.with_name(f".{target.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(staging)
    for nested in staging.glob("annotations/panoptic_val2017.zip"):
        with zipfile.ZipFile(nested) as handle:
            handle.extractall(nested.parent)
        nested.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.rglob("*"), key=lambda path: len(path.parts)):
        destination = target / entry.relative_to(staging)
        if entry.is_dir():
            destination.mkdir(exist_ok=True)
        else:
            entry.replace(destination)
    shutil.rmtree(staging)


def fetch_all(workdir: Path, downloads: tuple[Download, ...] = DOWNLOADS) -> None:
    for item in downloads:
        if (workdir / item.done).exists():
            continue
        archive = workdir / "downloads" / item.file
        if not archive.exists():  # a complete earlier download (a partial one is never renamed into place)
            print(f"downloading {item.url}", flush=True)
            download(item.url, archive, item.sha256)
        if item.extract_to is not None:
            extract(archive, workdir / item.extract_to)


# ---------------------------------------------------------------------------------------------------- steps


def convert(workdir: Path, checkpoint: Path) -> Path:
    """The OpenAI checkpoint as a HarmoCLIP folder (square region preset), converted once."""
    output = workdir / "models" / "clip-vitb16"
    if not (output / "config.json").exists():
        command = [
            sys.executable,
            "-m",
            "conversion.convert_clip",
            "--source",
            "openai",
            "--checkpoint",
            str(checkpoint),
            "--bpe-path",
            str(BPE_PATH),
            "--output",
            str(output),
            "--region-mode",
        ]
        subprocess.run(command, cwd=ROOT, check=True)
    return output


def evaluate_model(
    workdir: Path,
    name: str,
    model: Path,
    class_embeddings: Path,
    flickr_images: Path | None,
    device: str,
    sizes: dict[str, int | None],
    batch_size: int,
    num_workers: int,
) -> Path:
    """Every protocol on one model; results in `results/<name>/<protocol>.json`. The class embeddings are written by
    the first box run when `class_embeddings` does not exist yet, and read by every later one."""
    out = workdir / "results" / name
    coco = workdir / "data" / "coco"
    common = [
        "--model",
        str(model),
        "--device",
        device,
        "--batch-size",
        str(batch_size),
        "--num-workers",
        str(num_workers),
    ]
    for protocol in ("fineclip", "clipself"):
        target = out / f"boxcls_{protocol}.json"
        if target.exists():
            continue
        embeddings = (
            ["--class-embeddings-from", str(class_embeddings)]
            if class_embeddings.exists()
            else ["--save-class-embeddings", str(class_embeddings)]
        )
        size = ["--image-size", str(sizes[protocol])] if sizes.get(protocol) else []
        evaluate_command(
            common
            + [
                "--task",
                "boxcls",
                "--protocol",
                protocol,
                "--data",
                str(coco / "annotations" / "panoptic_val2017.json"),
                "--image-root",
                str(coco / "val2017"),
                "--out",
                str(target),
            ]
            + embeddings
            + size
        )
    runs = {"retrieval_coco": (workdir / "data" / "karpathy" / "dataset_coco.json", coco)}
    if flickr_images is not None:
        runs["retrieval_flickr30k"] = (workdir / "data" / "karpathy" / "dataset_flickr30k.json", flickr_images)
    for result, (data, images) in runs.items():
        target = out / f"{result}.json"
        if not target.exists():
            evaluate_command(
                common
                + [
                    "--task",
                    "retrieval",
                    "--protocol",
                    "fineclip",
                    "--data",
                    str(data),
                    "--image-root",
                    str(images),
                    "--split",
                    "test",
                    "--out",
                    str(target),
                ]
            )
    return out


def _lookup(results: dict, key: str) -> float | None:
    value = results
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def compare(results_dirs: dict[str, Path], published: dict, tolerance: float | None = None) -> tuple[list[dict], str]:
    """Rows of `published` for the models in `results_dirs`, with our figure, the difference and a status:
    "ok" (within tolerance), "DIFFERS", "no comparable published figure known" (`published` null; the row's `note`
    says why and is printed in place of a source) or "not run" (no result)."""
    tolerance = float(published["tolerance"] if tolerance is None else tolerance)
    rows = []
    for row in published["rows"]:
        if row["model"] not in results_dirs:
            continue
        path = results_dirs[row["model"]] / f"{row['result']}.json"
        ours = _lookup(json.loads(path.read_text())["results"], row["key"]) if path.exists() else None
        reference = row.get("published")
        difference = None if ours is None or reference is None else ours - float(reference)
        if ours is None:
            status = "not run"
        elif reference is None:
            status = NO_COMPARABLE_FIGURE
        else:
            status = "ok" if abs(difference) <= tolerance else "DIFFERS"
        rows.append({**row, "ours": ours, "difference": difference, "status": status})

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"Tolerance: {tolerance:g} points. Backbones and protocols of the published rows: docs/published_figures.md.",
        "",
        "| model | figure | ours | published | difference | status | source (or why none) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['label']} | {cell(r['ours'])} | {cell(r.get('published'))} | {cell(r['difference'])} "
        f"| {r['status']} | {r.get('source') or r.get('note', '')} |"
        for r in rows
    ]
    return rows, "\n".join(lines) + "\n"


def train(workdir: Path, init_from: Path, extra: list[str]) -> Path:
    """Fine-tunes the converted model with configs/vitb16_finetune.yaml (all visible GPUs); returns the model folder."""
    output_dir = workdir / "outputs" / "vitb16_coco"
    model = output_dir / "model"
    if (model / "config.json").exists():
        return model
    coco = workdir / "data" / "coco"
    command = [
        "accelerate",
        "launch",
        str(ROOT / "training" / "train.py"),
        "--config",
        str(ROOT / "configs" / "vitb16_finetune.yaml"),
        "--init_from",
        str(init_from),
        "--train_data",
        str(coco / "annotations" / "captions_train2017.json"),
        "--coco_instances",
        str(coco / "annotations" / "instances_train2017.json"),
        "--val_data",
        str(coco / "annotations" / "captions_val2017.json"),
        "--image_root",
        str(coco / "train2017"),
        "--val_image_root",
        str(coco / "val2017"),
        "--output_dir",
        str(output_dir),
        *extra,
    ]
    print(" ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path("repro"), help="downloads, data, models and results go here"
    )
    parser.add_argument(
        "--flickr30k-images", type=Path, default=None, help="folder of Flickr30k's images (not downloadable)"
    )
    parser.add_argument("--finetuned", type=Path, default=None, help="also evaluate this trained HarmoCLIP folder")
    parser.add_argument(
        "--train", action="store_true", help="train with configs/vitb16_finetune.yaml first, then evaluate it"
    )
    parser.add_argument(
        "--train-args", nargs=argparse.REMAINDER, default=[], help="options appended to the training command"
    )
    parser.add_argument("--skip-download", action="store_true", help="use the files already in --workdir")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument(
        "--fineclip-size", type=int, default=None, help="input size of the fineclip protocol (default 224)"
    )
    parser.add_argument(
        "--clipself-size", type=int, default=None, help="input size of the clipself protocol (default 1024)"
    )
    parser.add_argument("--tolerance", type=float, default=None, help="points (default: published_figures.json's)")
    parser.add_argument("--published", type=Path, default=PUBLISHED)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = args.workdir.resolve()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if not args.skip_download:
            fetch_all(workdir, DOWNLOADS + (TRAIN_DOWNLOADS if args.train else ()))
    except DownloadError as error:
        print(f"reproduce: {error}", file=sys.stderr)
        return 2
    pretrained = convert(workdir, workdir / "downloads" / "ViT-B-16.pt")
    models = {"pretrained": pretrained}
    if args.train:
        models["finetuned"] = train(workdir, pretrained, args.train_args)
    elif args.finetuned is not None:
        models["finetuned"] = args.finetuned.resolve()
    class_embeddings = workdir / "results" / "class_embeddings_clip_vitb16_vild.npy"
    sizes = {"fineclip": args.fineclip_size, "clipself": args.clipself_size}
    results = {
        name: evaluate_model(
            workdir,
            name,
            model,
            class_embeddings,
            args.flickr30k_images,
            args.device,
            sizes,
            args.batch_size,
            args.num_workers,
        )
        for name, model in models.items()
    }
    rows, table = compare(results, json.loads(args.published.read_text()), args.tolerance)
    write_text_atomic(workdir / "results" / "comparison.json", json.dumps(rows, indent=2) + "\n")
    write_text_atomic(workdir / "results" / "comparison.md", table)
    print(table)
    return 1 if any(row["status"] == "DIFFERS" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
