"""The readers benchmark end to end on a tiny synthetic run: every command timed, its block written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers_scripts import ROOT, load_script

from ilt_audit.audit.ranking import rank
from ilt_audit.run.trajectories import epoch_files


@pytest.fixture(scope="module")
def bench():
    yield load_script("benchmarks/readers.py", "bench_readers")
    sys.modules.pop("bench_readers", None)


def test_readers_benchmark_replaces_its_block_and_keeps_the_rest(bench, tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    head, tail = "# Benchmarks\n\nWritten by hand.\n\n", "\n\nTail text, after the block.\n"
    stale = "<!-- readers:start -->\nold figures\n<!-- readers:end -->"
    out_md = tmp_path / "benchmarks.md"
    out_md.write_text(head + stale + tail + docs, encoding="utf-8")
    args = ["--quick", "--repeat", "1", "--workdir", str(tmp_path / "work")]
    assert bench.main([*args, "--out-md", str(out_md)]) == 0

    text = out_md.read_text(encoding="utf-8")
    start, end = text.index("<!-- readers:start -->"), text.index("<!-- readers:end -->")
    assert text[:start] == head
    assert text[end + len("<!-- readers:end -->") :] == tail + docs
    block = text[start:end]
    assert "old figures" not in block
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip(" `") for row in rows] == [c.name for c in bench.COMMANDS]
    n = bench.QUICK_SIZES[0]
    assert all(f"| {n:,} | {bench.QUICK_EPOCHS} |" in row for row in rows)
    assert "python benchmarks/readers.py --quick --repeat 1" in block
    assert "CPU cores" in block and "pyarrow" in block

    # the synthetic run is one the commands can read: its planted labels rank on top
    run = tmp_path / "work" / f"n{n}-e{bench.QUICK_EPOCHS}" / "run"
    assert sorted(epoch_files(run)) == list(range(1, bench.QUICK_EPOCHS + 1))
    first = rank(run, task="label", top=1)
    assert (
        first.score.iloc[0] > 0 and first.label.iloc[0] in sys.modules["_shared"].SYNTHETIC_CLASSES
    )


def test_a_built_run_is_reused(bench, tmp_path: Path) -> None:
    case = bench.build_synthetic_run(tmp_path / "case", 50, 2)
    stamp = [p.stat().st_mtime_ns for p in sorted((case.run / "trajectories").iterdir())]
    again = bench.build_synthetic_run(tmp_path / "case", 50, 2)
    assert [p.stat().st_mtime_ns for p in sorted((again.run / "trajectories").iterdir())] == stamp
    bench.build_synthetic_run(tmp_path / "case", 50, 3)  # other sizes: built anew
    assert sorted(epoch_files(case.run)) == [1, 2, 3]
