"""The benchmarks' shared Markdown blocks, and the throughput benchmark end to end (--quick)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_scripts import load_script

REPORT = """# Benchmarks

Written by hand.

<!-- notes:start -->
Findings kept across runs.
<!-- notes:end -->

<!-- readers:start -->
## Readers
| reader | rows/s |
<!-- readers:end -->

Tail text.
"""


@pytest.fixture(scope="module")
def md():
    yield load_script("benchmarks/_shared.py", "bench_shared")
    sys.modules.pop("bench_shared", None)


def test_a_block_is_replaced_where_it_stands_and_nothing_else_moves(md) -> None:
    text = md.replace_block(REPORT, "readers", "## Readers\nnew figures")
    assert text == REPORT.replace("| reader | rows/s |", "new figures")
    assert md.replace_block(text, "readers", "## Readers\nnew figures") == text


def test_an_absent_block_is_appended_at_the_end(md) -> None:
    text = md.replace_block(REPORT, "throughput", "\n## Throughput\n")
    assert text.startswith(REPORT.rstrip("\n") + "\n\n")
    assert text.endswith("<!-- throughput:start -->\n## Throughput\n<!-- throughput:end -->\n")
    assert md.read_block(text, "throughput") == "## Throughput"
    assert (
        md.replace_block("", "throughput", "x")
        == "<!-- throughput:start -->\nx\n<!-- throughput:end -->\n"
    )


def test_blocks_are_listed_in_order_and_foreign_ones_whole(md) -> None:
    assert [name for name, _ in md.blocks(REPORT)] == ["notes", "readers"]
    assert md.foreign_blocks(REPORT, {"notes"}) == [
        "<!-- readers:start -->\n## Readers\n| reader | rows/s |\n<!-- readers:end -->"
    ]
    assert md.read_block(REPORT, "notes") == "Findings kept across runs."
    assert md.read_block(REPORT, "throughput") is None


def test_write_block_creates_or_edits_a_file(md, tmp_path: Path) -> None:
    path = tmp_path / "docs" / "bench.md"
    md.write_block(path, "readers", "first")
    md.write_block(path, "throughput", "second")
    md.write_block(path, "readers", "third")
    assert [name for name, _ in md.blocks(path.read_text())] == ["readers", "throughput"]
    assert md.read_block(path.read_text(), "readers") == "third"


def test_detection_report_keeps_the_other_scripts_blocks(tmp_path: Path) -> None:
    detection = load_script("benchmarks/detection.py", "bench_detection_blocks")
    try:
        out_md = tmp_path / "bench.md"
        text = REPORT + "\n<!-- throughput:start -->\n## Throughput\n<!-- throughput:end -->\n"
        out_md.write_text(text, encoding="utf-8")
        settings = detection.parse_args(
            ["--samples", "penguins", "--workdir", str(tmp_path / "w"), "--out-md", str(out_md)]
        )
        report = detection.write_report(settings, [], 0.0)
    finally:
        sys.modules.pop("bench_detection_blocks", None)
    assert "Findings kept across runs." in report
    assert report.index("<!-- notes:end -->") < report.index("<!-- readers:start -->")
    assert report.index("<!-- readers:end -->") < report.index("<!-- throughput:start -->")
    assert report.count("<!-- notes:start -->") == 1
    assert "Written by hand." not in report  # outside every block: the script's own text


def test_throughput_quick_writes_its_block_and_keeps_the_rest(tmp_path: Path) -> None:
    throughput = load_script("benchmarks/throughput.py", "bench_throughput")
    try:
        out_md, workdir = tmp_path / "bench.md", tmp_path / "work"
        out_md.write_text(REPORT, encoding="utf-8")
        args = ["--quick", "--threads", "1", "--workdir", str(workdir), "--out-md", str(out_md)]
        assert throughput.main(args) == 0
    finally:
        sys.modules.pop("bench_throughput", None)

    text = out_md.read_text(encoding="utf-8")
    assert text.startswith(REPORT.rstrip("\n") + "\n\n<!-- throughput:start -->\n## Throughput")
    block = text[len(REPORT) :]
    for figure in (
        "ILT epoch ÷ equal epoch, 2,000 rows",
        "ILT epoch ÷ plain-loop epoch, 2,000 rows",
        "`train` wall clock (ILT), 2,000 rows",
        "`rank --top 1% --output suspects.csv` wall clock, 2,000 rows",
        "ILT instances/s ÷ plain loop's, 64 images",
        "`train` peak RSS at 64 ÷ at 32 images",
    ):
        assert f"| {figure} | — |" in block  # no target at these sizes
    assert "python benchmarks/throughput.py --quick --threads 1" in block
    assert "torch threads 1" in block

    raw = json.loads((workdir / "throughput.json").read_text())
    (features,) = raw["features"]
    for method in ("plain", "equal", "ilt"):
        assert len(features[method]["epoch_s"]) == 2
    assert features["rank"]["wall_s"] > 0 and features["rank_terminal"]["wall_s"] > 0
    assert [r["n"] for r in raw["images"]] == [32, 64]
    for record in raw["images"]:
        assert record["ilt"]["peak_rss_mib"] > 0 and record["plain"]["samples_per_s"][0] > 0
        # what the report says is what train wrote
        run = workdir / "runs" / f"images-{record['n']}-ilt"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert record["ilt"]["samples_per_s"] == [m["samples_per_s"] for m in metrics]


def test_stored_images_alone_write_their_own_block_and_keep_the_throughput_block(
    tmp_path: Path,
) -> None:
    throughput = load_script("benchmarks/throughput.py", "bench_throughput")
    out_md, workdir = tmp_path / "bench.md", tmp_path / "work"
    before = REPORT + "\n<!-- throughput:start -->\nkept\n<!-- throughput:end -->\n"
    out_md.write_text(before, encoding="utf-8")
    try:
        args = ["--feature-sizes", "", "--image-sizes", "", "--stored-images", "16"]
        args += ["--repeat", "1", "--device", "cpu", "--workdir", str(workdir)]
        assert throughput.main([*args, "--out-md", str(out_md)]) == 0
    finally:
        sys.modules.pop("bench_throughput", None)

    text = out_md.read_text(encoding="utf-8")
    assert text.startswith(before.rstrip("\n") + "\n\n<!-- throughput-bytes:start -->")
    raw = json.loads((workdir / "throughput.json").read_text())["stored"]
    assert raw["n"] == 16 and raw["files"][0] > 0 and raw["stored"][0] > 0
    assert f"| 16 | {raw['files'][0]:,.0f} | {raw['stored'][0]:,.0f} |" in text
    stored = pq.read_table(workdir / "data" / "images-16" / "stored.parquet")
    assert stored.schema.field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
