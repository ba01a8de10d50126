"""Readers refuse a run that did not finish its planned epochs, unless told to read it as it is.

The one door (:func:`ilt_audit.run.directory.open_run`): `rank`, `evaluate`, `report` and `gate` exit 2 on
an unfinished run, naming the epochs finished of those planned and the command that resumes it;
``--allow-partial`` reads it and says so in every output (terminal, JSON, JUnit, Markdown, HTML).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from ilt_audit.audit.ranking import scores
from ilt_audit.corruption.planting import corrupt
from ilt_audit.errors import RunDirError
from ilt_audit.run.directory import open_run, read_metrics
from ilt_audit.run.trajectories import epoch_file, read_trajectories, write_epoch
from ilt_audit.training.loop import train

PLANNED = 4
FINISHED = 2


class _Stop(KeyboardInterrupt):
    """What a Ctrl-C after an epoch does to `train`: every finished epoch is kept."""


def _stopped_after(epochs: int):
    def on_epoch(row):
        if row["epoch"] == epochs:
            raise _Stop

    return on_epoch


@pytest.fixture
def stopped(tmp_path, features_card, tiny):
    """A run planned for 4 epochs and stopped after its 2nd, with a corruption file for it."""
    noisy = corrupt(features_card, tasks=["label"], fraction=0.2, seed=0, out=tmp_path / "noisy")
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(noisy.card_path, run, config=tiny(epochs=PLANNED), on_epoch=_stopped_after(FINISHED))
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    return run, noisy


def _reader_commands(run, noisy, out):
    return {
        "rank": ["rank", run],
        "evaluate": ["evaluate", run, "--truth", noisy.truth_path],
        "report": ["report", run, "--out", out / "report.html"],
        "gate": [
            "gate",
            run,
            "--junit",
            out / "gate.xml",
            "--summary",
            out / "gate.md",
        ],
    }


@pytest.mark.parametrize("command", ["rank", "evaluate", "report", "gate"])
def test_every_reader_refuses_an_unfinished_run(stopped, cli, tmp_path, files_of, command):
    run, noisy = stopped
    out = tmp_path / "out"
    out.mkdir()
    before = files_of(run)
    result = cli(*_reader_commands(run, noisy, out)[command])
    assert result.exit_code == 2, result.stderr
    assert result.err.count("Error:") == 1 and "Traceback" not in result.err
    assert f"unfinished run: {FINISHED} of {PLANNED} epochs finished" in result.err
    assert f"ilt-audit train {noisy.card_path} --out {run} --resume" in result.err
    assert "--allow-partial" in result.err
    assert list(out.iterdir()) == []  # nothing written
    assert files_of(run) == before


def test_the_command_it_names_finishes_the_run_and_the_readers_accept_it(stopped, cli):
    run, noisy = stopped
    message = cli("gate", run).err
    command = message[message.index("`ilt-audit train") + 1 : message.index("--resume`") + 8]
    args = command.split()[1:]
    resumed = cli(*args, "--batch-size", "8", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.stderr
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3, 4]
    assert cli("gate", run, "--max-suspect", "100%").exit_code == 0


def test_allow_partial_reads_the_finished_epochs_and_says_so_everywhere(stopped, cli, tmp_path):
    run, noisy = stopped
    note = f"Unfinished run, read as it is (--allow-partial): {FINISHED} of {PLANNED} epochs"

    ranked = cli("rank", run, "--allow-partial", "--format", "csv")
    assert ranked.exit_code == 0, ranked.stderr
    assert note in ranked.err
    assert "id,task,score" in ranked.out.replace("rank,", "")

    evaluated = cli("evaluate", run, "--truth", noisy.truth_path, "--allow-partial")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert note in evaluated.err

    report = tmp_path / "report.html"
    made = cli("report", run, "--out", report, "--allow-partial")
    assert made.exit_code == 0, made.stderr
    assert note in report.read_text(encoding="utf-8")

    xml, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    gated = cli(
        "gate",
        run,
        "--allow-partial",
        "--max-suspect",
        "100%",
        "--junit",
        xml,
        "--summary",
        md,
        "--format",
        "json",
    )
    assert gated.exit_code == 0, gated.stderr
    result = json.loads(gated.out)
    assert (result["partial"], result["epochs_finished"], result["epochs_planned"]) == (
        True,
        FINISHED,
        PLANNED,
    )
    properties = {p.get("name"): p.get("value") for p in ET.parse(xml).getroot().iter("property")}
    assert properties["partial"] == "true" and properties["epochs_finished"] == str(FINISHED)
    assert all(
        note in (case.findtext("system-out") or "") for case in ET.parse(xml).iter("testcase")
    )
    assert "Unfinished run" in md.read_text(encoding="utf-8")


def test_a_finished_run_says_nothing_of_the_kind(planted_run, cli, tmp_path):
    xml = tmp_path / "gate.xml"
    gated = cli("gate", planted_run.run, "--max-suspect", "100%", "--junit", xml, "-f", "json")
    assert gated.exit_code == 0, gated.stderr
    assert json.loads(gated.out)["partial"] is False
    assert "Unfinished" not in gated.err + xml.read_text(encoding="utf-8")


def test_an_epoch_written_but_not_recorded_is_not_read(stopped):
    # killed between the trajectory write of epoch 3 and its metrics line: epoch 3 is unfinished
    run, _ = stopped
    epoch2 = read_trajectories(run, epochs=[2])
    ids = list(dict.fromkeys(epoch2.id))
    write_epoch(
        run, 3, ids, ["label", "target"], np.full((len(ids), 2), 3.5), np.ones((len(ids), 2))
    )
    assert epoch_file(run, 3).exists()
    opened = open_run(run, allow_partial=True)
    assert opened.epochs == (1, 2)
    final = scores(opened, by="final").sort_values(["task", "id"]).score.to_numpy()
    expected = epoch2.sort_values(["task", "id"]).log_sigma2.to_numpy()
    assert np.array_equal(final, expected)


def test_a_run_with_no_finished_epoch_is_refused_even_with_allow_partial(
    tmp_path, features_card, tiny, cli
):
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train(features_card, run, config=tiny(epochs=3), on_epoch=_stopped_after(1))
    (run / "metrics.jsonl").write_text("")  # as if killed inside epoch 1
    result = cli("rank", run, "--allow-partial")
    assert result.exit_code == 2
    assert "the run has no finished epoch (0 of 3 epochs finished)" in result.err


def test_an_epoch_recorded_without_its_trajectory_file_is_refused(stopped):
    run, _ = stopped
    epoch_file(run, 1).unlink()
    with pytest.raises(
        RunDirError, match="epoch 1 is recorded in metrics.jsonl but its trajectory"
    ):
        open_run(run, allow_partial=True)


def test_review_of_an_unfinished_run_reads_the_finished_epochs_only(stopped):
    from ilt_audit.review.app import Filters, open_review

    run, _ = stopped
    epoch2 = read_trajectories(run, epochs=[2])
    ids = list(dict.fromkeys(epoch2.id))
    write_epoch(  # written but not recorded: epoch 3 is unfinished and must not be shown
        run, 3, ids, ["label", "target"], np.full((len(ids), 2), 3.5), np.ones((len(ids), 2))
    )
    review = open_review(run, top="100%", allow_partial=True)
    found, _ = review.page("label", 1, Filters())
    assert found
    for suspect in found:
        curve = json.loads(suspect["trajectory"])
        assert len(curve) == 2 and 3.5 not in curve
    assert all(len(m) == 2 for m in review.medians().values())
