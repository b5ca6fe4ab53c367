"""Every atomic write, with the fault injected: an exception between writing and renaming, `OSError(ENOSPC)` from a
write, and SIGKILL of the process during `save_pretrained` of the final model.

The outcome required of each: the previous file or folder is intact, nothing partial is left under the final name,
and the next write (or run) goes through, or says in one line what it found.
Writers: the checkpoint, the final model folder, a converted model, an exported CLIP folder, the teacher cache,
prepared shards, and evaluation outputs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet
import pytest
import torch
from accelerate import Accelerator

import plumbing.atomic_files
from conftest import ROOT, tiny_harmoclip_model, tiny_processor
from conversion.convert_clip import convert_clip
from conversion.export_clip import export_clip
from evaluation.evaluate import write_report
from plumbing.atomic_files import save_model_atomically, write_text_atomic
from training.checkpointing import latest_checkpoint, list_checkpoints, save_checkpoint
from training.data.prepare import build_parser, prepare
from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset


class InjectedFault(RuntimeError):
    """The exception the tests raise between writing and renaming."""


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def fingerprint(target: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `target` (or of `target` itself)."""
    if target.is_file():
        return {target.name: hashlib.sha256(target.read_bytes()).hexdigest()}
    return {
        str(path.relative_to(target)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(target.rglob("*"))
        if path.is_file()
    }


def leftovers(parent: Path, target: Path) -> list[str]:
    """Entries beside `target` that a write left behind (staging folders, temporary files, set-aside versions)."""
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(".") and target.name in path.name)


def fail_rename_into(monkeypatch, target: Path) -> None:
    """Makes the rename that puts a new version in place at `target` raise (the write itself is complete)."""
    real_rename, real_replace = os.rename, os.replace

    def guarded(real):
        def rename(source, destination, *args, **kwargs):
            staged = ".partial-" in Path(source).name or ".tmp" in Path(source).name  # not a restore of the old
            if Path(destination).absolute() == target.absolute() and staged:
                raise InjectedFault(f"injected between writing {source} and renaming it to {destination}")
            return real(source, destination, *args, **kwargs)

        return rename

    monkeypatch.setattr(os, "rename", guarded(real_rename))
    monkeypatch.setattr(os, "replace", guarded(real_replace))


@dataclass
class Writer:
    """One atomic write: `write(target, version)` writes a distinct `version` of the output to `target`;
    `write_call` is (object, attribute) of the library call that writes the bytes, made to fail with ENOSPC."""

    name: str
    write: Callable[[Path, int], None]
    write_call: tuple[object, str]
    target_name: str = "out"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """A saved HarmoCLIP folder, its plain-CLIP export (a converter's "hf" source), a JSONL manifest."""
    root = tmp_path_factory.mktemp("fault_sources")
    harmoclip = root / "harmoclip"
    save_model_atomically(tiny_harmoclip_model(seed=0), tiny_processor(tiny_tokenizer), harmoclip)
    export_clip(harmoclip, root / "clip")
    synthetic = generate_synthetic_dataset(root / "synthetic", SyntheticSettings(num_train=4, num_val=2, image_size=32))
    return {"harmoclip": harmoclip, "clip": root / "clip", "manifest": synthetic / "train.jsonl", "root": root}


def model_writer(tokenizer) -> Writer:
    def write(target: Path, version: int) -> None:
        save_model_atomically(tiny_harmoclip_model(seed=version), tiny_processor(tokenizer), target)

    import transformers.modeling_utils

    return Writer("final model folder", write, (transformers.modeling_utils, "safe_save_file"), "model")


def converted_writer(sources) -> Writer:
    def write(target: Path, version: int) -> None:
        convert_clip("hf", sources["clip"], target, overwrite=True, loss_gr_weight=float(version))

    import transformers.modeling_utils

    return Writer("converted model", write, (transformers.modeling_utils, "safe_save_file"))


def exported_writer(sources, tokenizer) -> Writer:
    def write(target: Path, version: int) -> None:
        source = sources["root"] / f"harmoclip-{version}"
        if not source.exists():
            save_model_atomically(tiny_harmoclip_model(seed=version), tiny_processor(tokenizer), source)
        export_clip(source, target, overwrite=True)

    import transformers.modeling_utils

    return Writer("exported CLIP folder", write, (transformers.modeling_utils, "safe_save_file"))


def teacher_cache_writer(sources) -> Writer:
    from training.cache_teacher import build_teacher_cache_folder
    from training.config import load_config

    def write(target: Path, version: int) -> None:
        overrides = {
            "synthetic_num_train": 4,
            "synthetic_num_val": 2,
            "synthetic_image_size": 32,
            "image_size": 32,
            "synthetic_dir": str(sources["root"] / f"synthetic-{version}"),
            "output_dir": str(sources["root"] / "run"),
            "loss_gr_weight": 1.0,
            "seed": version,
        }
        config = load_config(ROOT / "configs" / "synthetic_tiny.yaml", overrides)
        build_teacher_cache_folder(config, target, batch_size=2, overwrite=True)

    import training.cache_teacher

    return Writer("teacher cache", write, (training.cache_teacher, "save_file"), "cache")


def shards_writer(sources) -> Writer:
    def write(target: Path, version: int) -> None:
        argv = ["--source", "jsonl", "--input", str(sources["manifest"]), "--out", str(target)]
        prepare(build_parser().parse_args([*argv, "--samples-per-shard", str(version + 1), "--overwrite"]))

    return Writer("prepared shards", write, (pyarrow.parquet.ParquetWriter, "write_table"), "shards")


def evaluation_writer() -> Writer:
    def write(target: Path, version: int) -> None:
        report = {
            "task": "retrieval",
            "command": f"harmoclip-eval (version {version})",
            "settings": {"model": "model", "data": "data", "ks": [1]},
            "results": {"num_images": 2, "num_captions": 4, "i2t_R@1": 50.0, "t2i_R@1": 25.0, "rsum": 75.0 + version},
        }
        write_report(report, target)

    class FullDiskFile:
        """`os.fdopen`'s file whose writes fail as on a full disk."""

        def __init__(self, *args, **kwargs):
            self.handle = REAL_FDOPEN(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    return Writer("evaluation outputs", write, (os, "fdopen", FullDiskFile), "eval.json")


REAL_FDOPEN = os.fdopen


def checkpoint_writer() -> Writer:
    """`save_checkpoint` of a tiny model, one process; `version` is the step."""
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))

    def write(target: Path, version: int) -> None:
        with torch.no_grad():
            model.weight.fill_(float(version))
        save_checkpoint(accelerator, target, 1, {"epoch": 0, "batch_in_epoch": version}, keep=3)

    import accelerate.utils.other

    return Writer("checkpoint", write, (accelerate.utils.other, "safe_save_file"), "run")


WRITERS = ["checkpoint", "model", "converted", "exported", "teacher cache", "shards", "evaluation"]


@pytest.fixture
def writer(request, sources, tiny_tokenizer) -> Writer:
    return {
        "checkpoint": checkpoint_writer,
        "model": lambda: model_writer(tiny_tokenizer),
        "converted": lambda: converted_writer(sources),
        "exported": lambda: exported_writer(sources, tiny_tokenizer),
        "teacher cache": lambda: teacher_cache_writer(sources),
        "shards": lambda: shards_writer(sources),
        "evaluation": evaluation_writer,
    }[request.param]()


def final_output(writer: Writer, target: Path) -> Path:
    """What must stay intact: for a checkpoint, the step's folder inside the run's folder."""
    return target / "checkpoints" / "step_00000001" if writer.name == "checkpoint" else target


@pytest.mark.parametrize("writer", WRITERS, indirect=True)
@pytest.mark.parametrize("fault", ["exception before the rename", "ENOSPC from a write"])
def test_a_fault_leaves_the_previous_version_intact(writer: Writer, fault: str, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / writer.target_name
    writer.write(target, 1)
    output = final_output(writer, target)
    before = fingerprint(output)
    assert before
    with monkeypatch.context() as patch:
        if fault == "ENOSPC from a write":
            owner, attribute, *replacement = writer.write_call
            patch.setattr(owner, attribute, replacement[0] if replacement else full_disk)
            expected: type[BaseException] = OSError
        else:
            fail_rename_into(patch, output)
            expected = InjectedFault
        with pytest.raises(expected) as caught:
            writer.write(target, 2)
    if expected is OSError:
        assert caught.value.errno == errno.ENOSPC
    assert fingerprint(output) == before, f"{writer.name}: the previous version changed"
    assert leftovers(output.parent, output) == [], f"{writer.name}: partial output left beside {output.name}"
    if writer.name == "checkpoint":
        assert list_checkpoints(target) == [output]
    writer.write(target, 3)  # the next write goes through
    assert fingerprint(output) != before


def test_checkpoint_killed_while_replacing_its_step_still_resumes(tmp_path: Path, caplog) -> None:
    """A run killed between setting a step's previous checkpoint aside and renaming the new one in: the previous one
    still counts, and the incomplete new one is named in one log line."""
    writer = checkpoint_writer()
    writer.write(tmp_path, 1)
    folder = tmp_path / "checkpoints"
    os.rename(folder / "step_00000001", folder / ".old-step_00000001")  # the state a kill at that instant leaves
    (folder / ".tmp-step_00000002").mkdir()  # and a save killed half-way
    with caplog.at_level(logging.WARNING, logger="harmoclip.checkpointing"):
        assert latest_checkpoint(tmp_path) == folder / ".old-step_00000001"
    assert any(
        ".tmp-step_00000002" in record.getMessage() and "\n" not in record.getMessage() for record in caplog.records
    )
    writer.write(tmp_path, 2)  # saving the step again replaces the set-aside one
    assert latest_checkpoint(tmp_path) == folder / "step_00000001"
    assert json.loads((folder / "step_00000001" / "trainer_state.json").read_text())["batch_in_epoch"] == 2


KILLED_SAVE = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
import transformers.modeling_utils
from transformers import CLIPTokenizer
from conftest import tiny_harmoclip_model, tiny_processor
from plumbing.atomic_files import save_model_atomically

real = transformers.modeling_utils.safe_save_file
def save_then_die(*args, **kwargs):
    real(*args, **kwargs)  # the weights are on disk, the folder is not complete: killed now
    os.kill(os.getpid(), signal.SIGKILL)
transformers.modeling_utils.safe_save_file = save_then_die
save_model_atomically(tiny_harmoclip_model(seed=2), tiny_processor(CLIPTokenizer.from_pretrained({tokenizer!r})),
                      {target!r})
"""


def test_sigkill_during_save_pretrained_of_the_final_model(tmp_path: Path, tiny_tokenizer_dir, tiny_tokenizer, caplog):
    target = tmp_path / "model"
    save_model_atomically(tiny_harmoclip_model(seed=1), tiny_processor(tiny_tokenizer), target)
    before = fingerprint(target)
    code = KILLED_SAVE.format(
        root=str(ROOT), tests=str(ROOT / "tests"), tokenizer=str(tiny_tokenizer_dir), target=str(target)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert fingerprint(target) == before
    left = leftovers(tmp_path, target)
    assert len(left) == 1 and left[0].startswith(".model.partial-")  # a killed process cannot clean up
    # The next write recognises what the killed one left, removes it, says so in one line, and goes through.
    with caplog.at_level(logging.WARNING, logger="harmoclip.atomic_files"):
        save_model_atomically(tiny_harmoclip_model(seed=3), tiny_processor(tiny_tokenizer), target)
    messages = [record.getMessage() for record in caplog.records]
    assert any(left[0] in message and "interrupted write" in message and "\n" not in message for message in messages)
    assert leftovers(tmp_path, target) == [] and fingerprint(target) != before


def test_a_previous_version_set_aside_by_a_killed_swap_is_restored(tmp_path: Path, caplog) -> None:
    """Killed between moving the old version aside and renaming the new one in: the next write puts it back first."""
    target = tmp_path / "data"
    with plumbing.atomic_files.atomic_directory(target) as staging:
        (staging / "a.txt").write_text("old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = plumbing.atomic_files.socket.gethostname().replace("-", "_")
    os.rename(target, tmp_path / f".data.previous-{host}-{dead.stdout.strip()}-0000abcd")
    with caplog.at_level(logging.WARNING, logger="harmoclip.atomic_files"):
        with pytest.raises(FileExistsError):  # restored first, so a write without overwrite refuses as it should
            with plumbing.atomic_files.atomic_directory(target):
                pass
    assert (target / "a.txt").read_text() == "old" and leftovers(tmp_path, target) == []
    assert any("restored" in record.getMessage() for record in caplog.records)


def test_write_text_atomic_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")
    fail_rename_into(monkeypatch, path)
    with pytest.raises(InjectedFault):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and leftovers(tmp_path, path) == []


def test_checkpoints_beyond_keep_are_pruned_after_each_save(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(accelerator, tmp_path, step, {"epoch": 0, "batch_in_epoch": step}, keep=2)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]
