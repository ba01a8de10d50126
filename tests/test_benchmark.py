"""The detection benchmark script end to end, on the penguins sample with 2-epoch runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers_scripts import load_script

from ilt_audit.evaluation import evaluate


@pytest.fixture(scope="module")
def bench():
    yield load_script("benchmarks/detection.py", "bench_detection")
    sys.modules.pop("bench_detection", None)


def _args(workdir: Path, out_md: Path) -> list[str]:
    return [
        "--samples", "penguins", "--tasks", "species", "--seeds", "2", "--fractions", "0.4",
        "--epochs", "2", "--no-cleanlab", "--threads", "1",
        "--workdir", str(workdir), "--out-md", str(out_md),
    ]  # fmt: skip


def _targets_row(markdown: str, target: str, task: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] == target and cells[2].startswith(task):
            return cells
    raise AssertionError(f"no targets row {target!r} for {task!r}")


def test_benchmark_writes_the_report_from_its_own_runs(bench, tmp_path: Path) -> None:
    workdir, out_md = tmp_path / "work", tmp_path / "bench.md"
    assert bench.main(_args(workdir, out_md)) == 0
    records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    ilt = [r for r in records if r["section"] == "detection" and r["method"] == "ilt"]
    assert sorted(r["seed"] for r in ilt) == [0, 1]

    # The recorded figure is what `evaluate` says of the run it kept.
    for record in ilt:
        case = workdir / "detection" / "penguins" / "species" / f"f0.4-s{record['seed']}"
        table = evaluate(case / "ilt", case / "data" / "corruption.parquet", by=bench.DEFAULT_BY)
        expected = float(table.loc[table.task == "species", "detection_accuracy"].iloc[0])
        assert record["scores"][bench.DEFAULT_BY]["detection_accuracy"] == pytest.approx(expected)

    markdown = out_md.read_text(encoding="utf-8")
    row = _targets_row(markdown, "≥ 95% detection at 40%", "species")
    mean = sum(r["scores"][bench.DEFAULT_BY]["detection_accuracy"] for r in ilt) / 2
    assert row[3].startswith(f"{mean:.1%}")
    assert row[4] == ("**met**" if mean >= 0.95 else "**not met**")
    # the bound comes from the model-quality runs: clean and corrupted held-out accuracy
    quality = [
        r["val"]["species"]["accuracy"]
        for r in records
        if r["section"] == "quality" and r["method"] == "ilt" and r["condition"] == "clean"
    ]
    assert len(quality) == 2
    assert f"{sum(quality) / 2:.1%} trained on clean labels" in row[5]
    assert "trained with 40% of them corrupted" in row[5]


def test_benchmark_resume_reuses_finished_runs_and_keeps_notes(bench, tmp_path: Path) -> None:
    workdir, out_md = tmp_path / "work", tmp_path / "bench.md"
    args = [*_args(workdir, out_md), "--no-quality"]
    assert bench.main(args) == 0
    before = (workdir / "results.jsonl").read_text()
    markdown = out_md.read_text(encoding="utf-8")
    notes = "Hand-written findings survive a rerun."
    start, end = markdown.index(bench.NOTES_START), markdown.index(bench.NOTES_END)
    out_md.write_text(
        markdown[: start + len(bench.NOTES_START)] + "\n" + notes + "\n" + markdown[end:],
        encoding="utf-8",
    )

    with pytest.raises(SystemExit, match="--resume"):  # earlier results are never overwritten
        bench.main(args)
    assert bench.main([*args, "--resume"]) == 0
    assert (workdir / "results.jsonl").read_text() == before  # nothing trained again
    assert notes in out_md.read_text(encoding="utf-8")
