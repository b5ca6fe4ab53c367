"""The front page: short, with the two commands `.ci/run` relies on, and a first-use snippet that runs as written on
a saved model folder (the main job's, here a tiny one in its place)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageDraw

from conftest import ROOT, run_isolated, save_tiny_folder

README = (ROOT / "README.md").read_text()


def test_the_front_page_is_short_and_gives_the_two_commands() -> None:
    assert len(README.splitlines()) <= 150
    assert "bash scripts/run_default.sh" in README and "bash scripts/test.sh" in README
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    for link in re.findall(r"\]\(((?:docs/|CONTRIBUTING)[^)#]*)", README):  # every guide it links exists
        assert (ROOT / link).is_file(), link
    assert "Zeng, Haoxi" in README and "HarmoCLIP: Harmonizing Global and Regional" in README


def test_the_first_use_snippet_runs_as_written_on_a_saved_folder(tiny_tokenizer, tmp_path: Path) -> None:
    snippet = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    assert 'MODEL = "outputs/synthetic_tiny/model"' in snippet
    folder = tmp_path / "model"
    save_tiny_folder(folder, tiny_tokenizer, seed=13, region_mode=True)
    image = Image.new("RGB", (64, 64), (120, 120, 120))
    ImageDraw.Draw(image).rectangle([6, 11, 19, 24], fill=(220, 30, 30))
    ImageDraw.Draw(image).ellipse([36, 46, 53, 63], fill=(30, 200, 30))
    image.save(tmp_path / "held_out.png")
    # The same code, the two paths pointed at the stand-ins; run where the project cannot be imported, as a user would.
    code = snippet.replace('"outputs/synthetic_tiny/model"', repr(str(folder))).replace(
        '"outputs/synthetic/images/val/000000.png"', repr(str(tmp_path / "held_out.png"))
    )
    result = run_isolated(code, cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert [line.split(" -> ")[0] for line in lines[:3]] == [
        "small white cross",
        "small red square",
        "small green circle",
    ]
    assert "'label':" in lines[3] and lines[4].startswith("[")
