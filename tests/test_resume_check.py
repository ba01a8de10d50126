"""``--resume`` refuses inputs that changed since the run started: the card, its manifest and every
file the manifest names (size and modification time), unless told to go on."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ilt_audit.dataset.files import file_stats
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.dataset.record import INPUTS
from ilt_audit.run.directory import read_metrics
from ilt_audit.training.loop import train

FILES = 12 * 3  # the image card's files: an image, a mask and a depth map per row


def _interrupted(card, run, tiny) -> None:
    """A run planned for 2 epochs that finished 1 (an image card: batch 4)."""
    train(card, run, config=tiny(epochs=1, batch_size=4))


def _rewrite_mask(card, row_id: str) -> None:
    """A new, valid mask (all background) for one row, with a later modification time."""
    path = card.parent / "masks" / f"{row_id}.png"
    stat = path.stat()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_the_run_records_every_file_in_table_order(image_card, tmp_path, tiny):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)

    table = pq.read_table(run / INPUTS).to_pandas()

    assert list(table.columns) == ["id", "column", "path", "size", "mtime_ns"]
    assert len(table) == FILES
    assert table.head(4).values[:, :3].tolist() == [
        ["i000", "image", "images/i000.png"],
        ["i000", "mask", "masks/i000.png"],
        ["i000", "depth", "depth/i000.npy"],
        ["i001", "image", "images/i001.png"],
    ]
    mask = os.stat(image_card.parent / "masks" / "i000.png")
    assert table.loc[1, ["size", "mtime_ns"]].tolist() == [mask.st_size, mask.st_mtime_ns]


def test_a_features_card_records_no_files(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    assert pq.read_table(run / INPUTS).num_rows == 0


def test_resume_after_a_mask_changed_exits_2_naming_it_and_writes_nothing(
    image_card, tmp_path, tiny, cli, files_of
):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    before = files_of(run)
    _rewrite_mask(image_card, "i005")

    result = cli("train", image_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 2
    assert result.err.startswith(
        f"Error: {run}: 1 of {FILES} files the manifest names changed since this run started; "
        "the first: row id 'i005', column 'mask', file 'masks/i005.png'"
    )
    assert result.err.endswith(
        "Start a new run, or pass --accept-changed-files to resume with the files as they are now"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert files_of(run) == before


def test_the_first_changed_file_in_table_order_is_named(image_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    _rewrite_mask(image_card, "i009")
    depth = image_card.parent / "depth" / "i002.npy"
    stat = depth.stat()
    os.utime(depth, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same bytes, touched

    result = cli("train", image_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 2
    assert (
        f"2 of {FILES} files the manifest names changed since this run started; the first: "
        "row id 'i002', column 'depth', file 'depth/i002.npy' was modified."
    ) in result.err


def test_a_file_that_is_gone_is_named(image_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    (image_card.parent / "images" / "i007.png").unlink()

    result = cli("train", image_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 2
    assert "row id 'i007', column 'image', file 'images/i007.png' is gone" in result.err


def test_accept_changed_files_resumes_with_a_warning(image_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    _rewrite_mask(image_card, "i005")

    result = cli(
        "train", image_card, "--out", run, "--resume", "--epochs", "2", "--accept-changed-files"
    )

    assert result.exit_code == 0, result.stderr
    assert (
        f"Warning: 1 of {FILES} files the manifest names changed since this run started; the "
        "first: row id 'i005', column 'mask'"
    ) in result.err
    assert "resuming with the files as they are now (--accept-changed-files)" in result.err
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    # the record now holds the files the run went on with: the next resume has nothing to say
    again = cli("train", image_card, "--out", run, "--resume", "--epochs", "3")
    assert again.exit_code == 0, again.stderr
    assert "Warning" not in again.err


def test_from_python_accepted_changes_are_a_warning(image_card, tmp_path, tiny):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    _rewrite_mask(image_card, "i005")

    with pytest.warns(
        UserWarning, match=f"1 of {FILES} files the manifest names changed"
    ) as caught:
        train(
            image_card,
            run,
            config=tiny(epochs=2, batch_size=4),
            resume=True,
            accept_changed_files=True,
        )

    assert caught[0].filename == __file__  # points at the caller's line
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]


def test_resume_with_unchanged_files_goes_on_without_a_warning(image_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)

    result = cli("train", image_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 0, result.stderr
    assert "Warning" not in result.err
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]


def test_a_run_without_a_record_of_its_files_resumes_and_gets_one(image_card, tmp_path, tiny, cli):
    run = tmp_path / "run"
    _interrupted(image_card, run, tiny)
    (run / INPUTS).unlink()  # a run written before the record existed

    result = cli("train", image_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 0, result.stderr
    assert pq.read_table(run / INPUTS).num_rows == FILES


def test_resume_after_a_features_manifest_changed_exits_2_even_when_files_may_change(
    features_card, tmp_path, tiny, cli, files_of
):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    before = files_of(run)
    table = features_card.parent / "manifest.csv"
    table.write_text(table.read_text().replace(",a,", ",b,", 1))

    result = cli(
        "train", features_card, "--out", run, "--resume", "--epochs", "2", "--accept-changed-files"
    )

    assert result.exit_code == 2
    assert (
        f"Error: {run}: the dataset card or its manifest changed since this run started "
        f"({features_card}); start a new run instead of --resume"
    ) == result.err
    assert files_of(run) == before


def test_file_stats_marks_a_missing_file(image_card):
    manifest = load_manifest(image_card, check_files=False)
    (image_card.parent / "masks" / "i004.png").unlink()

    found = file_stats(manifest)

    assert found.columns == ["image", "mask", "depth"]
    assert found.stats.shape == (12, 3, 2)
    assert not found.complete
    assert found.stats[4, 1].tolist() == [-1, -1]
    assert (np.delete(found.stats.reshape(-1, 2), 4 * 3 + 1, axis=0) > 0).all()


def test_train_stats_each_file_once(image_card, tmp_path, tiny, monkeypatch):
    # the run's record of its files and the validation cache's key share one stat per file
    from ilt_audit.dataset import files as data

    calls = []
    real = data._stat_each
    monkeypatch.setattr(data, "_stat_each", lambda paths: calls.append(len(paths)) or real(paths))
    train(image_card, tmp_path / "run", config=tiny(epochs=1))
    assert len(calls) == 3  # image, mask, depth columns, once each
