"""`benchmarks/owlv2_detection.py` end to end at tiny sizes, checked as `test_benchmarks.py` checks every benchmark:
the rates and ratios recomputed from the raw per-round times, the printed table against the JSON."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from test_benchmarks import cell, check_ratio, check_summary, run_script, table_rows


def test_owlv2_detection(tmp_path: Path) -> None:
    payload = run_script("owlv2_detection", tmp_path, "--images", "2", "--labels", "3", "--repeats", "2")
    assert payload["settings"]["images"] == 2 and len(payload["settings"]["labels"]) == 3
    assert [row["method"] for row in payload["results"]] == ["harmoclip_own_size", "harmoclip_owlv2_size"]
    printed = table_rows(payload["markdown"], "HarmoCLIP input")
    assert len(printed) == 2
    for row, line in zip(payload["results"], printed, strict=True):
        ours, owl = check_summary(row["harmoclip"], 2), check_summary(row["owlv2"], 2)
        check_ratio(row["speedup"], owl, ours)
        assert row["harmoclip_images_per_s"] == pytest.approx(2 / statistics.median(ours), rel=1e-12)
        assert row["owlv2_images_per_s"] == pytest.approx(2 / statistics.median(owl), rel=1e-12)
        assert line[:4] == [
            f"{row['harmoclip_input_size']} px",
            f"{row['owlv2_input_size']} px",
            cell(row["harmoclip_images_per_s"]),
            cell(row["owlv2_images_per_s"]),
        ]
        assert line[4].startswith(f"{row['speedup']['median']:.2f} (")
    # The same OWLv2 times in both rows: one run, one OWLv2 pipeline.
    assert payload["results"][0]["owlv2"] == payload["results"][1]["owlv2"]
