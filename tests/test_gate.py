"""`ilt-audit gate`: what is suspect, the exit codes, and the JUnit, Markdown and JSON outputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ilt_audit.audit import gate as gate_module
from ilt_audit.audit.gate import MAX_GAP, MIN_GAP, SIGMAS, cutoff, find_suspects, gate, parse_share
from ilt_audit.audit.ranking import rank
from ilt_audit.errors import OptionError
from ilt_audit.run.trajectories import read_trajectories, write_epoch
from ilt_audit.training.loop import train

PLANTED = ("r001", "r002")  # the two instances whose `label` log σ² is set far above the rest


@pytest.fixture
def scored_run(features_card, tmp_path, tiny) -> Path:
    """A real one-epoch run on 40 rows whose log σ² are then set by hand.

    ``label``: clean instances spread around -3, the two PLANTED ones at +2 (5% of 40).
    ``target``: every instance clean.
    """
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    table = read_trajectories(run)
    ids = list(dict.fromkeys(table.id))
    rng = np.random.default_rng(0)
    log_sigma2 = rng.normal(-3.0, 0.3, size=(len(ids), 2))  # (N, K): label, target
    for row_id in PLANTED:
        log_sigma2[ids.index(row_id), 0] = 2.0
    loss = np.exp(log_sigma2)
    write_epoch(run, 1, ids, ["label", "target"], log_sigma2, loss)
    return run


def _suspects(result, task: str) -> list[str]:
    (verdict,) = [t for t in result.tasks if t.task == task]
    return verdict.suspect_list.id.tolist()


# --- the rule ------------------------------------------------------------------------------------


def test_an_instance_far_above_the_median_is_suspect():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(-3.0, 0.5, size=200), [1.5, 2.0]]
    cut = cutoff(scores)
    assert np.median(scores) + MIN_GAP <= cut.threshold <= np.median(scores) + MAX_GAP
    assert np.flatnonzero(scores > cut.threshold).tolist() == [200, 201]


def test_a_tight_clean_distribution_has_no_suspect():
    scores = np.random.default_rng(2).normal(-3.0, 0.05, size=1000)
    cut = cutoff(scores)
    assert cut.threshold == pytest.approx(np.median(scores) + MIN_GAP)  # the floor, not 3.5 × s
    assert not (scores > cut.threshold).any()


def test_the_cut_off_follows_the_spread_of_the_upper_half():
    rng = np.random.default_rng(4)
    scores = np.r_[np.full(300, -4.0), rng.normal(-3.0, 0.2, size=100)]  # a pile at the clamp
    cut = cutoff(scores)
    spread = (np.percentile(scores, 75) - np.median(scores)) / 0.6745
    expected = np.median(scores) + min(max(SIGMAS * spread, MIN_GAP), MAX_GAP)
    assert cut.threshold == pytest.approx(expected)


def test_many_wrong_labels_widening_the_spread_are_still_suspect():
    rng = np.random.default_rng(5)
    clean = rng.normal(-2.0, 1.0, size=400)
    wrong = rng.normal(2.5, 0.2, size=100)  # a fifth of the labels, far above
    scores = np.r_[clean, wrong]
    cut = cutoff(scores)
    assert cut.threshold == pytest.approx(np.median(scores) + MAX_GAP)  # the cap
    assert (wrong > cut.threshold).all()
    assert (clean > cut.threshold).mean() < 0.02


def test_the_rule_does_not_depend_on_the_scores_scale():
    rng = np.random.default_rng(3)
    log_sigma2 = np.r_[rng.normal(-2.0, 0.8, size=300), rng.normal(2.0, 0.5, size=30)]
    flagged = log_sigma2 > cutoff(log_sigma2).threshold
    assert flagged[300:].sum() > 20
    shifted = log_sigma2 + 1.7  # a harder task: every log σ² higher
    assert ((shifted > cutoff(shifted).threshold) == flagged).all()
    losses = 1000.0 * np.exp(log_sigma2)  # losses in other units, compared on a log scale
    assert ((losses > cutoff(losses, log=True).threshold) == flagged).all()


@pytest.mark.parametrize(
    ("text", "share"), [("2%", 0.02), ("0.02", 0.02), ("2.5 %", 0.025), ("0", 0.0), ("100%", 1.0)]
)
def test_max_suspect_is_a_percentage_or_a_share(text, share):
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["150%", "2", "-1%", "two", ""])
def test_max_suspect_outside_0_to_100_percent_is_refused(text):
    with pytest.raises(OptionError, match="--max-suspect"):
        parse_share(text)


def test_planted_label_errors_are_suspect_after_training(planted_run):
    result = gate(planted_run.run, max_suspect="2%")
    label = set(_suspects(result, "label"))
    target = set(_suspects(result, "target"))
    assert set(planted_run.flipped) <= label
    assert set(planted_run.shifted) <= target
    assert len(label) <= len(planted_run.flipped) + 2  # and not much else
    assert len(target) <= len(planted_run.shifted) + 2
    assert not result.passed
    assert gate(planted_run.run, max_suspect="20%").passed


# --- the command and its exit codes -------------------------------------------------------------


def test_gate_fails_with_exit_1_and_lists_the_suspects(cli, scored_run):
    result = cli("gate", scored_run, "--max-suspect", "2%")
    assert result.exit_code == 1, result.stderr
    assert (
        "Gate failed: task label: 2 of 40 instances suspect (5.0%), more than 2.0% (0)."
        in result.err
    )
    assert "Gate failed: task target" not in result.err  # target passes (a note may name it)
    for row_id in PLANTED:
        assert row_id in result.out


@pytest.mark.parametrize("limit", ["5%", "0.05", "10%"])
def test_gate_passes_with_exit_0_within_the_limit(cli, scored_run, limit):
    result = cli("gate", scored_run, "--max-suspect", limit)
    assert result.exit_code == 0, result.stderr
    assert "Gate passed" in result.err


def test_gate_of_one_task(cli, scored_run):
    assert cli("gate", scored_run, "--task", "target", "--max-suspect", "0").exit_code == 0
    assert cli("gate", scored_run, "--task", "label", "--max-suspect", "0").exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-suspect", "150%"], "--max-suspect '150%': give a share of the instances"),
        (
            ["--task", "nope"],
            "--task 'nope': the run has no such task; its tasks are: label, target",
        ),
        (["--by", "nope"], "unknown score 'nope'"),
    ],
)
def test_gate_bad_options_exit_2(cli, scored_run, args, message):
    result = cli("gate", scored_run, *args)
    assert result.exit_code == 2
    assert f"Error: {message}" in result.err


def test_gate_on_something_that_is_not_a_run_exits_2(cli, tmp_path):
    result = cli("gate", tmp_path)
    assert result.exit_code == 2
    assert "not a run directory" in result.err


def test_a_run_without_ilt_parameters_is_judged_by_its_evidence(cli, features_card, tmp_path, tiny):
    train(features_card, tmp_path / "equal", config=tiny(epochs=1, weighting="equal"))
    result = cli("gate", tmp_path / "equal", "--max-suspect", "100%", "--format", "json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["score"] == "p_wrong"  # the network's view needs no log σ²
    assert all(0 <= t["error_rate"]["estimate"] <= 1 for t in found["tasks"])
    refused = cli("gate", tmp_path / "equal", "--by", "tail")
    assert refused.exit_code == 2
    assert "--weighting equal, which has no per-instance log σ²; use --by loss" in refused.err


# --- the outputs --------------------------------------------------------------------------------


def test_junit_has_one_test_case_per_task_and_a_failure_when_over(cli, scored_run, tmp_path):
    junit = tmp_path / "gate.xml"
    assert cli("gate", scored_run, "--max-suspect", "2%", "--junit", junit).exit_code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["label", "target"]
    failure = cases["label"].find("failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert message.startswith("2 of 40 instances suspect (5.0%); the limit is 2.0% (0); ")
    assert "estimated error rate" in message
    assert [line.split()[1] for line in (failure.text or "").splitlines()] == list(PLANTED)
    assert cases["target"].find("failure") is None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["max_suspect"] == "0.02"


def test_junit_of_a_passing_gate_has_no_failure(cli, scored_run, tmp_path):
    junit = tmp_path / "gate.xml"
    assert cli("gate", scored_run, "--max-suspect", "10%", "--junit", junit).exit_code == 0
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0"
    assert not list(root.iter("failure"))


def _markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of a Markdown text, as rows of {header: cell}."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ---") or line.startswith("| :--"):
            header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
            rows = []
            for body in lines[i + 1 :]:
                if not body.startswith("|"):
                    break
                rows.append(
                    dict(zip(header, (c.strip() for c in body.strip("|").split("|")), strict=True))
                )
            tables.append(rows)
    return tables


def test_markdown_summary_has_the_verdict_a_table_and_the_top_suspects(cli, scored_run, tmp_path):
    summary = tmp_path / "summary.md"
    assert cli("gate", scored_run, "--max-suspect", "2%", "--summary", summary).exit_code == 1
    text = summary.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "## ❌ ilt-audit gate failed"
    tasks, suspects = _markdown_tables(text)
    assert [(r["task"], r["instances"], r["suspects"], r["result"]) for r in tasks] == [
        ("label", "40", "2", "❌ fail"),
        ("target", "40", "0", "✅ pass"),
    ]
    assert [r["id"] for r in suspects] == list(PLANTED)
    assert "### Top suspects: label" in text


def test_json_is_the_full_result(cli, scored_run):
    result = cli("gate", scored_run, "--max-suspect", "2%", "--format", "json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert found["passed"] is False
    assert found["max_suspect"] == 0.02
    assert found["rule"] == {
        "p_wrong_above": 0.5,
        "sigmas": SIGMAS,
        "min_gap": MIN_GAP,
        "max_gap": MAX_GAP,
        "log_scale": False,
    }
    label, target = found["tasks"]
    assert (label["task"], label["suspects"], label["allowed"], label["passed"]) == (
        "label",
        2,
        0,
        False,
    )
    assert [s["id"] for s in label["suspect_list"]] == list(PLANTED)
    assert label["suspect_list"][0]["score"] > label["cutoff"]["threshold"]
    assert (target["suspects"], target["passed"]) == (0, True)


def test_csv_lists_the_suspects(cli, scored_run, tmp_path):
    out = tmp_path / "suspects.csv"
    result = cli("gate", scored_run, "--format", "csv", "--output", out)
    assert result.exit_code == 1
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["rank", "id", "task", "score", "label"]
    assert frame.id.tolist() == list(PLANTED)


# --- suspects are decided on the scores; labels only for the rows listed -----------------------


def test_suspect_lists_are_the_full_rankings_rows_above_the_cut_off(planted_run):
    result = gate(planted_run.run, max_suspect="2%")
    ranked = rank(planted_run.run, by=result.score)  # every instance, with its label
    for verdict in result.tasks:
        part = ranked[ranked.task == verdict.task]
        threshold = verdict.cutoff.threshold  # p_wrong: more likely wrong than right
        assert threshold == 0.5
        expected = part[part.score > threshold][["rank", "id", "score", "label"]]
        assert verdict.instances == len(part)
        pd.testing.assert_frame_equal(verdict.suspect_list, expected.reset_index(drop=True))
    assert sum(t.suspects for t in result.tasks) > 0  # the comparison is not vacuous


def test_labels_are_looked_up_for_the_suspects_only(scored_run, monkeypatch):
    seen = []
    original = gate_module.labels_of

    def spy(manifest, frame):
        seen.append(sorted(frame.id))
        return original(manifest, frame)

    monkeypatch.setattr(gate_module, "labels_of", spy)
    gate(scored_run, max_suspect="2%")
    assert seen == [sorted(PLANTED)]  # 2 of 80 rows: the label task's suspects, no target row


def test_find_suspects_lists_the_top_instances_beside_the_suspects(scored_run):
    found = find_suspects(scored_run, top=5)
    assert found.instances == {"label": 40, "target": 40}
    table = found.table
    assert table.groupby("task", sort=False).size().to_dict() == {"label": 5, "target": 5}
    label = table[table.task == "label"]
    assert label.id.tolist()[:2] == list(PLANTED)
    assert label.suspect.tolist() == [True, True, False, False, False]
    assert not table[table.task == "target"].suspect.any()
    assert (label.label != "").all()
