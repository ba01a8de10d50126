"""Exit codes CI can trust (SPEC section 8): 0 success, 1 only a gate over its limit, 2 bad input
(one `Error:` line, no traceback), 3 a bug (traceback kept, with a line saying so), 130 interrupted.
No command ends with Python's default exit 1 on an uncaught exception."""

from __future__ import annotations

import subprocess
import sys

import pytest

# every command, with arguments that get it past option parsing into the library call patched
COMMANDS = {
    "train": (
        "ilt_audit.training.loop",
        "train",
        lambda run, card, tmp: ["train", card, "--out", tmp / "r"],
    ),
    "rank": ("ilt_audit.audit.ranking", "rank", lambda run, card, tmp: ["rank", run]),
    "corrupt": (
        "ilt_audit.corruption.planting",
        "corrupt",
        lambda run, card, tmp: [
            "corrupt",
            card,
            "--task",
            "label",
            "--fraction",
            "0.2",
            "--out",
            tmp / "n",
        ],
    ),
    "evaluate": (
        "ilt_audit.audit.evaluation",
        "evaluate",
        lambda run, card, tmp: ["evaluate", run, "--truth", tmp / "truth.parquet"],
    ),
    "report": (
        "ilt_audit.review.report",
        "render_report",
        lambda run, card, tmp: ["report", run, "--out", tmp / "r.html"],
    ),
    "gate": ("ilt_audit.audit.gate", "gate", lambda run, card, tmp: ["gate", run]),
}


def _raise(exc: BaseException):
    def broken(*args, **kwargs):
        raise exc

    return broken


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unexpected_error_in_any_command_exits_3_with_its_traceback(
    command, cli, planted_run, tmp_path, monkeypatch
):
    module, name, args = COMMANDS[command]
    monkeypatch.setattr(f"{module}.{name}", _raise(RuntimeError("boom in the library")))
    result = cli(*args(planted_run.run, planted_run.card, tmp_path))
    assert result.exit_code == 3, result.stderr
    assert "Traceback (most recent call last)" in result.err
    assert "RuntimeError: boom in the library" in result.err
    assert "this is a bug in ilt-audit" in result.err


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (KeyboardInterrupt(), 130, "Error: interrupted"),
        (BrokenPipeError(), 2, "Error: the output was closed before everything was written"),
        (MemoryError(), 2, "Error: out of memory"),
    ],
)
def test_interrupts_closed_pipes_and_memory_have_their_codes(
    exc, code, message, cli, planted_run, monkeypatch
):
    monkeypatch.setattr("ilt_audit.audit.ranking.rank", _raise(exc))
    result = cli("rank", planted_run.run)
    assert result.exit_code == code
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_bug_exits_3_from_a_real_process(planted_run):
    # the console script's own path: main(), not the test runner
    code = (
        "import ilt_audit.audit.ranking as r\n"
        "def broken(*a, **k):\n"
        "    raise ZeroDivisionError('a bug')\n"
        "r.rank = broken\n"
        "import sys\n"
        f"sys.argv = ['ilt-audit', 'rank', {str(planted_run.run)!r}]\n"
        "from ilt_audit.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "ZeroDivisionError: a bug" in done.stderr
    assert "this is a bug in ilt-audit" in done.stderr


def test_a_usage_error_exits_2(cli, planted_run):
    result = cli("rank", planted_run.run, "--no-such-option")
    assert result.exit_code == 2
    assert "No such option" in result.err


def test_a_closed_stdout_pipe_is_not_a_traceback(planted_run):
    # `ilt-audit rank RUN --format csv | head -1`: the reader goes away early
    reader = subprocess.Popen(
        [sys.executable, "-m", "ilt_audit", "rank", str(planted_run.run), "--format", "csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    reader.stdout.close()  # before anything is read
    _, err = reader.communicate(timeout=120)
    assert reader.returncode in (0, 2), err
    assert b"Traceback" not in err
