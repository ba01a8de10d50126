"""The command line: help and version, start-up cost, and `ilt-audit train` end to end.

Card validation through `train` is in test_card.py, `rank` in test_ranking.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import typer

import ilt_audit
import ilt_audit.training.loop as training
from ilt_audit.cli import app
from ilt_audit.run.directory import read_config, read_metrics
from ilt_audit.training.loop import train

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


# --- help, version, start-up ----------------------------------------------------------------------


def test_the_spec_commands_exist():
    assert {"train", "rank", "corrupt", "evaluate", "report", "gate"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.stderr
    assert f"Usage: ilt-audit {command}" in result.out
    assert f"Example: ilt-audit {command} " in result.out


def test_main_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.out


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ilt-audit {ilt_audit.__version__}"


def test_train_help_shows_the_defaults(cli):
    result = cli("train", "--help")
    for default in ("[default: 30]", "[default: 0]", "[default: 32]", "[default: 0.1]"):
        assert default in result.out


def test_python_m_ilt_audit_is_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "ilt_audit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    for command in COMMANDS:
        assert command in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "ilt_audit", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.stdout.strip() == f"ilt-audit {ilt_audit.__version__}"


def test_help_does_not_import_torch_or_pandas():
    result = _python(
        """
        import sys
        from ilt_audit.cli import app
        for args in (["--help"], ["train", "--help"], ["rank", "--help"]):
            try:
                app(args, prog_name="ilt-audit")
            except SystemExit:
                pass
        heavy = [name for name in ("torch", "pandas", "pyarrow") if name in sys.modules]
        print("HEAVY:", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout


def test_public_api_train_is_the_function():
    result = _python(
        """
        import inspect
        from ilt_audit import TrainConfig, train, rank
        print("FUNCTION" if inspect.isfunction(train) and inspect.isfunction(rank) else "MODULE")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "FUNCTION" in result.stdout


# --- train ----------------------------------------------------------------------------------------


def test_train_writes_a_run_directory(features_card, tmp_path, cli):
    run = tmp_path / "run"
    result = cli(
        "train", features_card, "--out", run, "--epochs", "2", "--batch-size", "8", "--seed", "3",
        "--device", "cpu", "--lr", "0.005", "--ilt-lr", "0.2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # human output goes to stderr
    assert "epoch 1 label" in result.err and "epoch 2 label" in result.err
    assert f"Done: 2 epochs in {run}" in result.err
    options = read_config(run)["options"]
    assert (options["epochs"], options["batch_size"], options["seed"]) == (2, 8, 3)
    assert (options["lr"], options["ilt_lr"], options["weighting"], options["device"]) == (
        0.005, 0.2, "ilt", "cpu",
    )  # fmt: skip
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    frame = pd.read_parquet(run / "trajectories")
    assert len(frame) == 2 * 40 * 2
    assert np.isfinite(frame.log_sigma2).all()


def test_train_with_equal_weighting(features_card, tmp_path, cli):
    run = tmp_path / "run"
    result = cli("train", features_card, "--out", run, "--epochs", "1", "--weighting", "equal")
    assert result.exit_code == 0, result.stderr
    frame = pd.read_parquet(run / "trajectories")
    assert frame.log_sigma2.isna().all() and np.isfinite(frame.loss).all()
    assert read_config(run)["options"]["weighting"] == "equal"


def test_train_refuses_a_non_empty_output_without_resume(features_card, tmp_path, cli, files_of):
    run = tmp_path / "run"
    assert cli("train", features_card, "--out", run, "--epochs", "1").exit_code == 0
    before = files_of(run)
    result = cli("train", features_card, "--out", run, "--epochs", "1")
    assert result.exit_code == 2
    assert f"Error: {run}: the run directory exists and is not empty; pass --resume" in result.err
    assert files_of(run) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "Error: --epochs must be at least 1, got 0"),
        (["--batch-size", "0"], "Error: --batch-size must be at least 1, got 0"),
        (["--ilt-lr", "0"], "Error: --ilt-lr must be positive, got 0.0"),
        (["--device", "tpu"], "Error: --device 'tpu': choose auto, cpu or cuda"),
        (["--weighting", "median"], "Invalid value for '--weighting'"),
        (["--epochs", "two"], "Invalid value for '--epochs'"),
    ],
)
def test_train_bad_options_exit_2(features_card, tmp_path, cli, args, message):
    result = cli("train", features_card, "--out", tmp_path / "run", *args)
    assert result.exit_code == 2
    assert message in result.err
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_a_gpu_exit_2(features_card, tmp_path, cli):
    result = cli("train", features_card, "--out", tmp_path / "run", "--device", "cuda")
    assert result.exit_code == 2
    assert "Error: --device cuda: no CUDA device is available here" in result.err


def test_train_without_out_is_a_usage_error(features_card, cli):
    result = cli("train", features_card)
    assert result.exit_code == 2
    assert "Missing option '--out'" in result.err


def test_interrupted_train_exits_130_and_keeps_finished_epochs(
    features_card, tmp_path, cli, monkeypatch
):
    real_epoch = training._train_epoch

    def epoch(run, number, *rest):
        if number == 2:
            raise KeyboardInterrupt
        return real_epoch(run, number, *rest)

    monkeypatch.setattr(training, "_train_epoch", epoch)
    run = tmp_path / "run"
    result = cli("train", features_card, "--out", run, "--epochs", "3")
    assert result.exit_code == 130
    assert (
        f"Error: interrupted; every finished epoch is kept in {run}. Continue with --resume."
        in result.err
    )
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["epoch-0001.parquet"]
    assert [row["epoch"] for row in read_metrics(run)] == [1]


def test_diverged_training_exit_2_with_a_clear_message(features_card, tmp_path, cli, monkeypatch):
    real_losses = training.instance_losses
    monkeypatch.setattr(training, "instance_losses", lambda *a: real_losses(*a) * float("inf"))
    result = cli("train", features_card, "--out", tmp_path / "run", "--epochs", "2")
    assert result.exit_code == 2
    assert "Error: epoch 1, batch 1: the training loss became" in result.err
    assert "the 0 finished epoch(s) are kept. Try a lower --lr or --ilt-lr." in result.err
    assert "Traceback" not in result.stderr


def test_resume_with_more_epochs(features_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2))
    result = cli("train", features_card, "--out", run, "--resume", "--epochs", "3")
    assert result.exit_code == 0, result.stderr
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["options"]["epochs"] == 3


def test_resume_without_epochs_finishes_the_planned_run(features_card, tmp_path, tiny, cli):
    run = tmp_path / "run"

    def stop(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=3), on_epoch=stop)
    result = cli("train", features_card, "--out", run, "--resume")
    assert result.exit_code == 0, result.stderr
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


def test_ids_with_rich_markup_are_shown_as_text_not_parsed(make_features_card, tmp_path, tiny, cli):
    from ilt_audit.training.loop import train

    card = make_features_card(tmp_path / "data")
    table = card.parent / "manifest.csv"
    odd = {"r003": "[/]", "r004": "[bold]x[/bold]", "r005": "[red"}
    text = table.read_text()
    for old, new in odd.items():
        text = text.replace(f"\n{old},", f'\n"{new}",')
    table.write_text(text)
    run = tmp_path / "run"
    train(card, run, config=tiny())

    ranked = cli("rank", run)
    assert ranked.exit_code == 0, ranked.stderr
    for shown in odd.values():
        assert shown in ranked.stdout  # printed as written, markup and all
    gated = cli("gate", run, "--max-suspect", "0")
    assert gated.exit_code in (0, 1), gated.stderr  # a verdict, not a crash
    assert "Traceback" not in gated.stdout + gated.stderr


def test_csv_output_neutralises_formula_cells_and_keeps_numbers():
    import pandas as pd

    from ilt_audit.cli.common import _csv_safe

    frame = pd.DataFrame(
        {
            "rank": [1, 2, 3],
            "id": ["=cmd|' /C calc'!A0", "@SUM(1)", "plain"],
            "score": [-1.5, 0.25, 2.0],
            "label": ["+1", "-2", "a"],
        }
    )
    safe = _csv_safe(frame)
    assert safe.id.tolist() == ["'=cmd|' /C calc'!A0", "'@SUM(1)", "plain"]
    assert safe.label.tolist() == ["'+1", "'-2", "a"]
    assert safe.score.tolist() == [-1.5, 0.25, 2.0] and safe["rank"].tolist() == [1, 2, 3]
    assert frame.id[0].startswith("=")  # the caller's frame is left alone


def test_gate_summary_shows_untrusted_ids_as_text():
    from ilt_audit.audit.gate import _md

    assert _md("<script>alert(1)</script>") == "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
    assert _md("a|b\nc") == "a\\|b c"
    assert _md("`x`") == "\\`x\\`"
