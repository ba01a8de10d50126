"""Scores and rankings: planted label errors rank on top; --top, --task, --by; machine formats."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ilt_audit.audit import ranking
from ilt_audit.audit.ranking import DEFAULT_BY, SCORES, parse_top, rank, scores
from ilt_audit.errors import OptionError, RunDirError
from ilt_audit.run.directory import write_config, write_metrics
from ilt_audit.run.trajectories import epoch_file, epoch_files, write_epoch

COLUMNS = ["rank", "id", "task", "score", "label"]


# --- planted errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", [DEFAULT_BY, "final"])
def test_planted_errors_rank_on_top(planted_run, by):
    ranked = rank(planted_run.run, by=by)
    label = ranked[ranked.task == "label"]
    target = ranked[ranked.task == "target"]
    assert set(label.id.head(len(planted_run.flipped))) == set(planted_run.flipped)
    assert set(target.id.head(len(planted_run.shifted))) == set(planted_run.shifted)


def test_default_score_is_a_known_score():
    assert DEFAULT_BY in SCORES
    assert set(SCORES) == {"p_wrong", "final", "tail", "mean", "loss", "aum"}


def test_ranking_lists_every_instance_per_task_highest_score_first(planted_run):
    ranked = rank(planted_run.run)
    assert ranked.columns.tolist() == COLUMNS
    assert ranked.task.unique().tolist() == ["label", "target"]  # the card's task order
    for _, part in ranked.groupby("task"):
        assert part["rank"].tolist() == list(range(1, 61))
        assert part.id.nunique() == 60
        assert part.score.is_monotonic_decreasing


def test_label_column_is_the_label_in_the_manifest(planted_run):
    manifest = pd.read_csv(planted_run.card.parent / "manifest.csv", dtype={"id": str}).set_index(
        "id"
    )
    ranked = rank(planted_run.run)
    label = ranked[ranked.task == "label"].set_index("id").label
    assert (label == manifest.label.loc[label.index]).all()
    target = ranked[ranked.task == "target"].set_index("id").label
    row = manifest.loc["r008"]
    assert target["r008"] == f"y0={row.y0:g}, y1={row.y1:g}"


def test_top_count_keeps_that_many_per_task(planted_run):
    ranked = rank(planted_run.run, top=3)
    assert ranked.groupby("task").size().to_dict() == {"label": 3, "target": 3}
    assert ranked["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert rank(planted_run.run, top="3").equals(ranked)


@pytest.mark.parametrize(("top", "count"), [("10%", 6), ("7%", 5), ("1%", 1), ("100%", 60)])
def test_top_share_rounds_up(planted_run, top, count):
    ranked = rank(planted_run.run, top=top, labels=False)
    assert ranked.groupby("task").size().to_dict() == {"label": count, "target": count}
    assert count == math.ceil(float(top[:-1]) / 100 * 60)


def test_top_count_larger_than_the_dataset_keeps_everything(planted_run):
    assert len(rank(planted_run.run, top=1000, labels=False)) == 120


def test_task_filter(planted_run):
    ranked = rank(planted_run.run, task="target", top=4)
    assert ranked.task.unique().tolist() == ["target"]
    assert len(ranked) == 4


def test_unknown_task_lists_the_runs_tasks(planted_run):
    with pytest.raises(
        OptionError,
        match=r"--task 'colour': the run has no such task; its tasks are: label, target",
    ):
        rank(planted_run.run, task="colour")


def test_unknown_score_lists_the_choices(planted_run):
    with pytest.raises(
        OptionError,
        match=r"unknown score 'median'; choose one of p_wrong, final, tail, mean, loss, aum",
    ):
        rank(planted_run.run, by="median")


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ("40%", ("share", 0.4)),
        ("500", ("count", 500)),
        (500, ("count", 500)),
        (" 5 %", ("share", 0.05)),
        (None, None),
    ],
)
def test_parse_top(top, expected):
    assert parse_top(top) == expected


@pytest.mark.parametrize("top", ["0", "0%", "150%", "abc", "-3", "1.5", "", "10%%"])
def test_bad_top_is_an_option_error(top):
    with pytest.raises(OptionError, match="--top"):
        parse_top(top)


def test_ranking_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError):
        rank(tmp_path)


# --- the scores, on hand-written trajectories -----------------------------------------------------


def _finish(run, tasks, *, epochs):
    """What `train` writes besides the trajectories of a run that finished ``epochs`` epochs."""
    write_config(run, {"tasks": tasks, "options": {"epochs": epochs, "weighting": "ilt"}})
    write_metrics(run, [{"epoch": e, "loss": {}} for e in range(1, epochs + 1)])


@pytest.fixture
def handmade_run(tmp_path):
    """Eight epochs of two instances and one task with known log σ² and losses."""
    ids = ["p", "q"]
    p = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 3.0])  # rises at the end
    q = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 2.0])  # high all along
    for epoch in range(1, 9):
        log_sigma2 = np.array([[p[epoch - 1]], [q[epoch - 1]]])
        loss = np.array([[10.0 - epoch], [float(epoch)]])
        write_epoch(tmp_path, epoch, ids, ["t"], log_sigma2, loss)
    _finish(tmp_path, [{"name": "t", "type": "classification"}], epochs=8)
    return tmp_path, p, q


def test_scores_aggregate_the_trajectory(handmade_run):
    run, p, q = handmade_run

    def score(by):
        return scores(run, by=by).set_index("id").score.to_dict()

    assert score("final") == {"p": p[-1], "q": q[-1]}
    assert score("mean") == pytest.approx({"p": p.mean(), "q": q.mean()})
    assert score("tail") == pytest.approx(
        {"p": p[-2:].mean(), "q": q[-2:].mean()}
    )  # last ceil(8/4)
    assert score("loss") == {"p": 2.0, "q": 8.0}


@pytest.mark.parametrize(
    ("by", "first"), [("final", "p"), ("tail", "p"), ("mean", "q"), ("loss", "q")]
)
def test_each_score_orders_the_instances(handmade_run, by, first):
    run, _, _ = handmade_run
    assert rank(run, by=by, labels=False).id.tolist()[0] == first


def test_ties_are_broken_by_id(tmp_path):
    ids = ["b", "c", "a"]
    write_epoch(tmp_path, 1, ids, ["t"], np.zeros((3, 1)), np.zeros((3, 1)))
    _finish(tmp_path, [{"name": "t", "type": "regression"}], epochs=1)
    assert rank(tmp_path, labels=False).id.tolist() == ["a", "b", "c"]


# --- the command ----------------------------------------------------------------------------------


def test_cli_rank_table(planted_run, cli):
    result = cli("rank", planted_run.run, "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert "Most suspect labels" in result.out
    top = rank(planted_run.run, top=3)
    for row_id in top.id:
        assert row_id in result.stdout


def test_cli_rank_table_shows_the_top_of_each_task_and_says_what_it_left_out(
    planted_run, cli, monkeypatch
):
    from ilt_audit.cli import common as cli_module

    monkeypatch.setattr(cli_module, "TABLE_ROWS", 4)
    result = cli("rank", planted_run.run)
    assert result.exit_code == 0, result.stderr
    everything = rank(planted_run.run)
    shown = everything.groupby("task", sort=False).head(4)
    for row_id in shown.id:
        assert f" {row_id} " in result.out
    hidden = set(everything.id[everything["rank"] == 5]) - set(shown.id)
    assert hidden and not any(f" {row_id} " in result.out for row_id in hidden)
    assert f"{len(everything) - 8:,} more rows not shown" in result.err
    assert "--output FILE" in result.err
    full = cli("rank", planted_run.run, "--format", "csv")  # a machine format keeps every row
    assert len(pd.read_csv(io.StringIO(full.stdout))) == len(everything)


def test_cli_rank_csv_parses_back(planted_run, cli):
    result = cli("rank", planted_run.run, "--top", "3", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    parsed = pd.read_csv(io.StringIO(result.stdout), dtype={"id": str, "label": str})
    pd.testing.assert_frame_equal(parsed, rank(planted_run.run, top=3), check_dtype=False)


def test_cli_rank_json_parses_back(planted_run, cli):
    result = cli("rank", planted_run.run, "--top", "10%", "--format", "json")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    expected = rank(planted_run.run, top="10%")
    assert len(records) == len(expected) == 12
    assert [list(r) for r in records] == [COLUMNS] * 12
    parsed = pd.DataFrame.from_records(records)
    pd.testing.assert_frame_equal(parsed, expected, check_dtype=False, rtol=1e-6)


READERS = {
    "csv": lambda path: pd.read_csv(path, dtype={"id": str, "label": str}),
    "json": lambda path: pd.DataFrame.from_records(json.loads(path.read_text())),
    "parquet": pd.read_parquet,
}


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_cli_rank_writes_each_format_to_a_file(planted_run, cli, tmp_path, fmt):
    path = tmp_path / f"ranked.{fmt}"
    result = cli("rank", planted_run.run, "--top", "5", "--format", fmt, "--output", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    expected = rank(planted_run.run, top=5)
    pd.testing.assert_frame_equal(READERS[fmt](path), expected, check_dtype=False, rtol=1e-6)


def test_cli_rank_output_file_defaults_to_csv(planted_run, cli, tmp_path):
    path = tmp_path / "ranked.csv"
    result = cli("rank", planted_run.run, "--task", "label", "--output", path)
    assert result.exit_code == 0, result.stderr
    parsed = pd.read_csv(path, dtype={"id": str, "label": str})
    assert parsed.task.unique().tolist() == ["label"] and len(parsed) == 60
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_rank_parquet_needs_an_output_file(planted_run, cli):
    result = cli("rank", planted_run.run, "--format", "parquet")
    assert result.exit_code == 2
    assert "Error: --format parquet needs --output FILE" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "colour"],
            "--task 'colour': the run has no such task; its tasks are: label, target",
        ),
        (["--top", "abc"], "--top 'abc': give a count (500) or a share of the instances (40%)"),
        (["--top", "0"], "--top '0': give a count"),
        (["--top", "150%"], "--top 150%: a share must be within (0%, 100%]"),
        (
            ["--by", "median"],
            "unknown score 'median'; choose one of p_wrong, final, tail, mean, loss, aum",
        ),
    ],
)
def test_cli_rank_bad_options_exit_2(planted_run, cli, args, message):
    result = cli("rank", planted_run.run, *args)
    assert result.exit_code == 2
    assert f"Error: {message}" in result.err
    assert "Traceback" not in result.stderr


def test_cli_rank_of_a_folder_that_is_not_a_run(tmp_path, cli):
    result = cli("rank", tmp_path)
    assert result.exit_code == 2
    assert "not a run directory (no config.json)" in result.err


# --- what the scores read, and the cut before the labels ------------------------------------------


def _break(path):
    path.write_bytes(b"PAR1 not a parquet file")


def test_final_and_loss_read_only_the_last_epoch(handmade_run):
    run, p, q = handmade_run
    for epoch in range(1, 8):  # every epoch but the last is unreadable
        _break(epoch_file(run, epoch))
    assert scores(run, by="final").set_index("id").score.to_dict() == {"p": p[-1], "q": q[-1]}
    assert scores(run, by="loss").set_index("id").score.to_dict() == {"p": 2.0, "q": 8.0}
    with pytest.raises(RunDirError, match="epoch-0001.parquet: unreadable trajectory file"):
        scores(run, by="mean")


def test_tail_reads_only_the_last_quarter_of_the_epochs(handmade_run):
    run, p, q = handmade_run
    for epoch in range(1, 7):  # 8 epochs: the tail is epochs 7 and 8
        _break(epoch_file(run, epoch))
    assert scores(run, by="tail").set_index("id").score.to_dict() == pytest.approx(
        {"p": p[-2:].mean(), "q": q[-2:].mean()}
    )


def _reference_ranking(run, top_share):
    """The ranking as it was defined before the cut moved ahead of the sort: pandas, every row."""
    table = scores(run, by="final")
    parts = []
    for name in ["t", "u"]:
        part = table[table.task == name].sort_values(
            ["score", "id"], ascending=[False, True], kind="stable"
        )
        part = part.head(math.ceil(top_share * len(part)))
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    return pd.concat(parts, ignore_index=True)[["rank", "id", "task", "score"]]


@pytest.fixture
def tied_run(tmp_path):
    """200 instances, 2 tasks, scores on 4 levels (ties everywhere), one NaN; ids unsorted."""
    rng = np.random.default_rng(7)
    ids = [f"n{i:03d}" for i in rng.permutation(200)]
    log_sigma2 = rng.integers(-2, 2, size=(200, 2)).astype(np.float32)  # (N, K)
    log_sigma2[5, 1] = np.nan
    write_epoch(tmp_path, 1, ids, ["t", "u"], log_sigma2, np.ones((200, 2)))
    _finish(tmp_path, [{"name": "t", "type": "x"}, {"name": "u", "type": "x"}], epochs=1)
    return tmp_path


@pytest.mark.parametrize("share", [0.01, 0.1, 0.33, 0.5, 0.999, 1.0])
def test_cutting_first_keeps_the_rows_and_order_of_a_full_sort(tied_run, share):
    ranked = rank(tied_run, top=f"{share:.1%}", labels=False, by="final")
    expected = _reference_ranking(tied_run, float(f"{share:.1%}".rstrip("%")) / 100)
    pd.testing.assert_frame_equal(ranked, expected, check_dtype=False)
    kept = ranked[ranked.task == "u"]
    assert kept.score.isna().sum() == (len(kept) == 200)  # NaN ranks last


def test_labels_are_looked_up_for_the_kept_rows_only(planted_run, monkeypatch):
    seen = []
    original = ranking.labels_of

    def spy(manifest, frame):
        seen.append(len(frame))
        return original(manifest, frame)

    monkeypatch.setattr(ranking, "labels_of", spy)
    top = rank(planted_run.run, top=3)
    assert seen == [6]
    full = rank(planted_run.run)
    head = full.groupby("task", sort=False).head(3).reset_index(drop=True)
    pd.testing.assert_frame_equal(top, head)  # the same rows and labels as cutting afterwards


def test_an_instance_the_manifest_no_longer_has_gets_an_empty_label(planted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(planted_run.run, run)
    epoch = max(epoch_files(run))
    table = pq.read_table(epoch_file(run, epoch)).to_pandas()
    table.loc[table.id == "r003", "id"] = "gone"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), epoch_file(run, epoch))
    ranked = rank(run).set_index(["id", "task"]).label
    assert ranked[("gone", "label")] == ""
    assert ranked[("r004", "label")] != ""
