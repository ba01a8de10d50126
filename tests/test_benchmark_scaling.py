"""The scaling benchmark end to end at a tiny size: 1 and 2 processes timed, its block written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers_scripts import load_script


@pytest.fixture(scope="module")
def bench():
    yield load_script("benchmarks/scaling.py", "bench_scaling")
    sys.modules.pop("bench_scaling", None)
    sys.modules.pop("_shared", None)


def test_scaling_benchmark_writes_one_row_per_process_count(bench, tmp_path: Path) -> None:
    out_md = tmp_path / "benchmarks.md"
    out_md.write_text("# Benchmarks\n\nWritten by hand.\n", encoding="utf-8")
    work = tmp_path / "work"
    args = ["--rows", "600", "--epochs", "2", "--repeat", "1", "--workdir", str(work)]
    assert bench.main([*args, "--out-md", str(out_md)]) == 0

    text = out_md.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nWritten by hand.\n")
    block = text[text.index("<!-- scaling:start -->") : text.index("<!-- scaling:end -->")]
    rows = [
        line.split("|")[1].strip() for line in block.splitlines() if line[:4] in ("| 1 ", "| 2 ")
    ]
    assert rows == ["1", "2"]
    raw = json.loads((work / "scaling.json").read_text(encoding="utf-8"))
    best = raw["best"]
    assert best["1"]["overlap"] == 1.0  # the 1-process run against itself
    assert 0.0 <= best["2"]["overlap"] <= 1.0
    assert len(best["2"]["epoch_s"]) == 2
    assert "torch.distributed.run" in best["2"]["command"]
