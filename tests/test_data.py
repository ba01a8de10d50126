"""The streaming data path: the validation pass, per-item decoding, worker processes, batches."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_data import whole_batch

import ilt_audit.dataset.files as data_module
from ilt_audit.dataset import load_dataset
from ilt_audit.dataset.files import read_image
from ilt_audit.dataset.loader import EpochBatches
from ilt_audit.errors import CardError, OptionError
from ilt_audit.run.trajectories import epoch_files


def _corrupt_image(card, row_id):
    (card.parent / "images" / f"{row_id}.png").write_bytes(b"not a png")


def test_pixels_are_decoded_per_item_not_held_for_the_data_set(image_card):
    data = load_dataset(image_card, workers=0)
    n = len(data)
    # what stays in memory is table-sized: class indices and regression columns, no pixels
    assert sum(t.numel() for t in data.table.values()) <= n * 3
    item = data.instances(data.train_index)[5]
    assert item["input"].shape == (3, 16, 16) and item["error"] == ""
    assert item["targets"]["seg"].dtype == torch.uint8  # masks stay small until on the device


def test_validation_statistics_are_those_of_the_training_rows(make_image_card, tmp_path):
    card = make_image_card(tmp_path / "d", n=20)
    table = card.parent / "manifest.csv"
    frame = pd.read_csv(table)
    frame["split"] = ["val" if i % 4 == 0 else "train" for i in range(len(frame))]
    frame.to_csv(table, index=False)
    card.write_text('split = "split"\n' + card.read_text())

    data = load_dataset(card, workers=0)

    train = frame[frame.split == "train"]
    pixels = torch.stack([read_image(card.parent / p) for p in train.image]).double() / 255
    pixels = pixels.transpose(0, 1).reshape(3, -1)
    assert np.allclose(data.norm.input_mean, pixels.mean(dim=1).numpy(), atol=1e-9)
    assert np.allclose(data.norm.input_std, pixels.std(dim=1).numpy(), atol=1e-9)
    depth = np.stack([np.load(card.parent / p) for p in train.depth]).astype(np.float64)
    (mean,), (std,) = data.norm.targets["depth"]
    assert mean == pytest.approx(depth.mean()) and std == pytest.approx(depth.std(ddof=1))


def test_the_pass_reports_the_first_bad_row_in_table_order_whatever_the_workers(
    image_card, monkeypatch
):
    monkeypatch.setattr(data_module, "SCAN_CHUNK", 2)  # several chunks, checked by two workers
    _corrupt_image(image_card, "i009")
    _corrupt_image(image_card, "i003")
    for workers in (0, 2):
        with pytest.raises(CardError) as error:
            load_dataset(image_card, workers=workers)
        message = str(error.value)
        assert "row id 'i003'" in message and "column 'image'" in message
        assert "images/i003.png" in message and "cannot decode the image" in message


def test_a_missing_file_is_named_by_the_pass(image_card):
    (image_card.parent / "depth" / "i004.npy").unlink()
    with pytest.raises(CardError, match=r"row id 'i004': column 'depth': file not found"):
        load_dataset(image_card, workers=0)


def test_same_seed_same_trajectories_with_0_and_2_workers(image_card, tmp_path, tiny):
    from ilt_audit.training.loop import train

    for workers in (0, 2):
        train(image_card, tmp_path / f"w{workers}", config=tiny(batch_size=4, workers=workers))
    first = pd.read_parquet(tmp_path / "w0" / "trajectories")
    second = pd.read_parquet(tmp_path / "w2" / "trajectories")
    pd.testing.assert_frame_equal(first, second)
    assert first.log_sigma2.abs().sum() > 0


def test_a_file_that_goes_bad_mid_run_stops_training_and_keeps_finished_epochs(
    image_card, tmp_path, tiny
):
    from ilt_audit.run.directory import read_metrics
    from ilt_audit.training.loop import load_checkpoint, train

    run = tmp_path / "run"
    mask = image_card.parent / "masks" / "i007.png"

    def delete_after_first_epoch(row):
        if row["epoch"] == 1:
            mask.rename(mask.with_suffix(".bak"))

    with pytest.raises(CardError) as error:
        train(
            image_card,
            run,
            config=tiny(epochs=3, batch_size=4, workers=2),
            on_epoch=delete_after_first_epoch,
        )
    message = str(error.value)
    assert "row id 'i007': column 'mask': file not found" in message
    assert "the 1 finished epoch(s) are kept" in message
    assert sorted(epoch_files(run)) == [1]
    assert [m["epoch"] for m in read_metrics(run)] == [1]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1

    mask.with_suffix(".bak").rename(mask)  # the file is back: the run resumes where it stopped
    train(image_card, run, config=tiny(epochs=3, batch_size=4), resume=True)
    assert sorted(epoch_files(run)) == [1, 2, 3]


def test_each_epoch_is_a_permutation_seeded_by_seed_and_epoch():
    batches = EpochBatches(10, 3, seed=7)
    orders = []
    for epoch in (1, 2, 1):
        batches.set_epoch(epoch)
        chunks = list(batches)
        assert [len(c) for c in chunks] == [3, 3, 4]  # a last batch of one joins the previous
        assert len(chunks) == len(batches)
        orders.append([i for c in chunks for i in c])
    assert sorted(orders[0]) == list(range(10))
    assert orders[0] == orders[2] != orders[1]
    other = EpochBatches(10, 3, seed=8)
    other.set_epoch(1)
    assert [i for c in other for i in c] != orders[0]


def test_evaluation_batches_keep_the_rows_in_order():
    batches = EpochBatches(5, 2, shuffle=False)
    assert list(batches) == [[0, 1], [2, 3, 4]]


def test_the_loader_batch_carries_positions_for_the_ilt_table(features_card):
    data = load_dataset(features_card)
    rows = np.array([7, 3, 30])
    batch = whole_batch(data, rows)
    assert batch["index"].tolist() == [0, 1, 2]  # positions into rows: the ILT table's rows
    assert torch.equal(batch["input"], data.table["input"][rows])


def test_bad_precision_and_workers_are_refused(tiny):
    with pytest.raises(OptionError, match="fp16 needs a CUDA device"):
        tiny(precision="fp16").check()
    with pytest.raises(OptionError, match="--precision 'fp8'"):
        tiny(precision="fp8").check()
    with pytest.raises(OptionError, match="--workers must be 0 or more"):
        tiny(workers=-1).check()


def test_bf16_autocast_trains_on_the_cpu(features_card, tmp_path, tiny):
    from ilt_audit.training.loop import train

    train(features_card, tmp_path / "run", config=tiny(precision="bf16"))
    table = pd.read_parquet(tmp_path / "run" / "trajectories")
    assert np.isfinite(table.log_sigma2).all() and np.isfinite(table.loss).all()


def _no_decoding(*args, **kwargs):
    raise AssertionError("the files were decoded again")


def test_an_unchanged_data_set_is_not_decoded_twice(image_card, monkeypatch):
    first = load_dataset(image_card, workers=0)
    monkeypatch.setattr(data_module, "_scan", _no_decoding)
    again = load_dataset(image_card, workers=0)
    assert again.norm == first.norm
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(image_card, workers=0, rescan=True)


def test_a_changed_file_is_checked_again(image_card, monkeypatch):
    load_dataset(image_card, workers=0)
    mask = image_card.parent / "masks" / "i002.png"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    monkeypatch.setattr(data_module, "_scan", _no_decoding)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(image_card, workers=0)


def test_a_bad_file_is_never_cached_as_good(image_card):
    _corrupt_image(image_card, "i005")
    for _ in range(2):
        with pytest.raises(CardError, match="row id 'i005'"):
            load_dataset(image_card, workers=0)
