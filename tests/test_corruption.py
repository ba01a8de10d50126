"""corrupt(): exactly the requested labels change, nothing else does, and the same seed repeats."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import file_hashes, make_features_card, make_image_card, whole_batch

import ilt_audit.corruption.planting as corruption
from ilt_audit.corruption.planting import corrupt, read_truth
from ilt_audit.dataset.files import read_depth, read_mask
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.errors import CardError, OptionError, TruthError
from ilt_audit.internal.toml import toml_dumps


def corrupted_ids(truth: pd.DataFrame, task: str) -> set[str]:
    rows = truth[truth.task == task]
    return set(rows.id[rows.corrupted])


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("id")


# --- features: classification + regression ---------------------------------------------------


@pytest.mark.parametrize(
    "table",
    ["manifest.csv", "manifest.parquet", "manifest.jsonl"],
)
def test_features_exact_count_and_only_chosen_labels_change(tmp_path: Path, table: str) -> None:
    card = make_features_card(tmp_path / "data", n=40, table=table)
    before = file_hashes(tmp_path / "data")
    result = corrupt(card, tasks=["kind", "target"], fraction=0.3, seed=3, out=tmp_path / "noisy")

    assert result.counts == {"kind": 12, "target": 12}  # round(0.3 * 40)
    assert result.eligible == 40
    assert result.card_path == (tmp_path / "noisy" / "card.toml").resolve()
    assert (tmp_path / "noisy" / table).is_file()
    assert file_hashes(tmp_path / "data") == before

    old = load_manifest(card)
    new = load_manifest(result.card_path)
    truth = read_truth(result.truth_path)
    assert len(truth) == 2 * 40
    assert truth.groupby("task").corrupted.sum().to_dict() == {"kind": 12, "target": 12}

    old_frame, new_frame = by_id(old.frame), by_id(new.frame)
    kind_changed = set(old_frame.index[old_frame.kind != new_frame.kind])
    assert kind_changed == corrupted_ids(truth, "kind")
    assert new_frame.kind.isin(["ant", "bee", "cat"]).all()

    target_changed = (old_frame[["t0", "t1"]] != new_frame[["t0", "t1"]]).any(axis=1)
    assert set(old_frame.index[target_changed]) == corrupted_ids(truth, "target")
    # both columns of a corrupted target change, not just one
    assert (
        (old_frame[["t0", "t1"]] != new_frame[["t0", "t1"]]).all(axis=1) == target_changed
    ).all()

    untouched = ["f0", "f1", "f2", "note"]
    pd.testing.assert_frame_equal(old_frame[untouched], new_frame[untouched])


def test_regression_noise_is_added_from_the_columns_range(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=40)
    result = corrupt(card, tasks=["target"], fraction=0.5, out=tmp_path / "noisy")
    old = by_id(load_manifest(card).frame)
    new = by_id(load_manifest(result.card_path).frame)
    chosen = sorted(corrupted_ids(read_truth(result.truth_path), "target"))
    for column in ("t0", "t1"):
        low, high = old[column].min(), old[column].max()
        added = new.loc[chosen, column] - old.loc[chosen, column]
        assert added.between(low - 1e-12, high + 1e-12).all()


def test_replace_noise_draws_new_values_within_the_range(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=40)
    result = corrupt(card, tasks=["target"], fraction=0.5, out=tmp_path / "noisy", noise="replace")
    old = by_id(load_manifest(card).frame)
    new = by_id(load_manifest(result.card_path).frame)
    chosen = sorted(corrupted_ids(read_truth(result.truth_path), "target"))
    for column in ("t0", "t1"):
        assert new.loc[chosen, column].between(old[column].min(), old[column].max()).all()
        assert (new.loc[chosen, column] != old.loc[chosen, column]).all()


def test_integer_class_labels_stay_integers(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=30, int_labels=True)
    result = corrupt(card, tasks=["kind"], fraction=0.4, out=tmp_path / "noisy")
    raw = pd.read_csv(tmp_path / "noisy" / "manifest.csv")
    assert pd.api.types.is_integer_dtype(raw.kind)
    assert set(raw.kind) <= {0, 1, 2}
    old = pd.read_csv(tmp_path / "data" / "manifest.csv")
    assert int((old.kind != raw.kind).sum()) == result.counts["kind"] == 12


def test_classification_uses_one_permutation_that_moves_every_class(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=60)
    result = corrupt(card, tasks=["kind"], fraction=0.5, out=tmp_path / "noisy")
    old = by_id(load_manifest(card).frame).kind
    new = by_id(load_manifest(result.card_path).frame).kind
    changed = old != new
    mapping = dict(zip(old[changed], new[changed], strict=True))
    assert all(new[changed] == old[changed].map(mapping))  # one function of the old class
    assert all(source != target for source, target in mapping.items())


def test_same_seed_same_bytes_other_seed_other_selection(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=40)
    first = corrupt(card, tasks=["kind", "target"], fraction=0.25, seed=7, out=tmp_path / "a")
    corrupt(card, tasks=["kind", "target"], fraction=0.25, seed=7, out=tmp_path / "b")
    other = corrupt(card, tasks=["kind", "target"], fraction=0.25, seed=8, out=tmp_path / "c")
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    truth, truth_other = read_truth(first.truth_path), read_truth(other.truth_path)
    assert corrupted_ids(truth, "kind") != corrupted_ids(truth_other, "kind")
    assert corrupted_ids(truth, "target") != corrupted_ids(truth_other, "target")


def test_a_tasks_selection_ignores_the_other_tasks_and_their_order(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=40)
    both = corrupt(card, tasks=["target", "kind"], fraction=0.25, out=tmp_path / "a")
    alone = corrupt(card, tasks=["kind"], fraction=0.25, out=tmp_path / "b")
    corrupt(card, tasks=["kind", "target"], fraction=0.25, out=tmp_path / "c")
    kind = corrupted_ids(read_truth(both.truth_path), "kind")
    assert kind == corrupted_ids(read_truth(alone.truth_path), "kind")
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "c")
    assert list(both.counts) == ["kind", "target"]  # the card's order
    # each task draws its own instances: the tasks' corruptions are not the same rows
    assert kind != corrupted_ids(read_truth(both.truth_path), "target")


def test_only_training_rows_are_corrupted_and_named(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=40, split=True)  # 30 train, 10 val
    result = corrupt(card, tasks=["kind"], fraction=0.4, out=tmp_path / "noisy")
    assert result.eligible == 30
    assert result.counts == {"kind": 12}  # round(0.4 * 30)
    frame = by_id(load_manifest(card).frame)
    truth = read_truth(result.truth_path)
    assert set(truth.id) == set(frame.index[frame.split == "train"])
    new = by_id(load_manifest(result.card_path).frame)
    val = frame.split == "val"
    assert (new.kind[val] == frame.kind[val]).all()


def test_new_card_has_the_same_content(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=20, split=True)
    result = corrupt(card, tasks=["kind"], fraction=0.5, out=tmp_path / "noisy")
    old = tomllib.loads(card.read_text())
    assert tomllib.loads(result.card_path.read_text()) == old


# --- images: all four task types -------------------------------------------------------------


def test_image_dataset_all_task_types(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data")
    before = file_hashes(tmp_path / "data")
    out = tmp_path / "noisy"
    result = corrupt(card, tasks=["shape", "box", "seg", "depth"], fraction=0.5, seed=1, out=out)

    assert result.counts == {"shape": 6, "box": 6, "seg": 6, "depth": 6}
    assert file_hashes(tmp_path / "data") == before  # inputs untouched ...
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not any(name.startswith("images/") for name in written)  # ... and not copied
    assert len([n for n in written if n.startswith("seg/")]) == 6
    assert len([n for n in written if n.startswith("depth/")]) == 6

    old, new = load_manifest(card), load_manifest(result.card_path)
    truth = read_truth(result.truth_path)
    for column in ("image", "mask", "depth"):  # every path resolves to a file
        assert all(new.file_path(v).is_file() for v in new.frame[column])
    old_images = [old.file_path(v).resolve() for v in old.frame.image]
    assert [new.file_path(v).resolve() for v in new.frame.image] == old_images

    seg_changed, depth_changed = set(), set()
    high = max(float(read_depth(old.file_path(v)).max()) for v in old.frame.depth)
    for row, instance in enumerate(old.ids):
        old_mask = read_mask(old.file_path(old.frame["mask"][row]))
        new_mask = read_mask(new.file_path(new.frame["mask"][row]))
        ignored = old_mask == 255
        assert (new_mask[ignored] == 255).all()
        if (new_mask != old_mask).any():
            seg_changed.add(instance)
            assert (new_mask[~ignored] != old_mask[~ignored]).all()  # every labelled pixel moves
            assert new.frame["mask"][row] == f"seg/{instance}.png"
        else:
            assert (
                new.file_path(new.frame["mask"][row]).resolve()
                == old.file_path(old.frame["mask"][row]).resolve()
            )
        old_depth = read_depth(old.file_path(old.frame.depth[row]))
        new_depth = read_depth(new.file_path(new.frame.depth[row]))
        if not np.array_equal(old_depth, new_depth):
            depth_changed.add(instance)
            added = new_depth.astype(np.float64) - old_depth
            assert added.min() >= -1e-5 and added.max() <= high + 1e-5
            assert new.frame.depth[row] == f"depth/{instance}.npy"
    assert seg_changed == corrupted_ids(truth, "seg")
    assert depth_changed == corrupted_ids(truth, "depth")
    old_frame, new_frame = by_id(old.frame), by_id(new.frame)
    assert set(old_frame.index[old_frame["shape"] != new_frame["shape"]]) == corrupted_ids(
        truth, "shape"
    )
    box_changed = (old_frame[["x", "y"]] != new_frame[["x", "y"]]).any(axis=1)
    assert set(old_frame.index[box_changed]) == corrupted_ids(truth, "box")


def test_segmentation_uses_one_derangement_of_the_classes(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data")
    result = corrupt(card, tasks=["seg"], fraction=0.5, out=tmp_path / "noisy")
    old, new = load_manifest(card), load_manifest(result.card_path)
    mapping: dict[int, set[int]] = {}
    for row in range(len(old.frame)):
        old_mask = read_mask(old.file_path(old.frame["mask"][row]))
        new_mask = read_mask(new.file_path(new.frame["mask"][row]))
        if (old_mask != new_mask).any():
            for source, target in zip(old_mask.ravel(), new_mask.ravel(), strict=True):
                mapping.setdefault(int(source), set()).add(int(target))
    assert mapping.pop(255) == {255}
    assert all(len(targets) == 1 for targets in mapping.values())
    assert all(source not in targets for source, targets in mapping.items())


def test_the_new_dataset_loads(tmp_path: Path) -> None:
    from ilt_audit.dataset import load_dataset

    card = make_image_card(tmp_path / "data")
    result = corrupt(card, tasks=["seg", "depth"], fraction=0.25, out=tmp_path / "noisy")
    clean, noisy = whole_batch(load_dataset(card)), whole_batch(load_dataset(result.card_path))
    assert noisy["input"].equal(clean["input"])
    assert noisy["targets"]["seg"].shape == clean["targets"]["seg"].shape
    changed = (noisy["targets"]["seg"] != clean["targets"]["seg"]).flatten(1).any(dim=1)
    assert int(changed.sum()) == result.counts["seg"] == 3
    assert noisy["targets"]["shape"].equal(clean["targets"]["shape"])


def test_16_bit_depth_pngs_keep_their_scale(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data", depth="png16")
    result = corrupt(card, tasks=["depth"], fraction=0.5, out=tmp_path / "noisy")
    old, new = load_manifest(card), load_manifest(result.card_path)
    assert new.card.task("depth").scale == 1000
    truth = corrupted_ids(read_truth(result.truth_path), "depth")
    high = max(float(read_depth(old.file_path(v), 1000).max()) for v in old.frame.depth)
    assert 2.5 < high <= 3.0  # in metres, not millimetres
    for row, instance in enumerate(old.ids):
        old_depth = read_depth(old.file_path(old.frame.depth[row]), 1000)
        new_depth = read_depth(new.file_path(new.frame.depth[row]), 1000)
        if instance in truth:
            assert new.frame.depth[row].endswith(".npy")
            added = new_depth.astype(np.float64) - old_depth
            assert added.min() >= -1e-5 and added.max() <= high + 1e-5 and added.max() > 0
        else:
            assert new.frame.depth[row].endswith(".png")
            assert np.array_equal(old_depth, new_depth)


def test_masks_without_a_labelled_pixel_are_never_chosen(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data", blank_mask_rows=(4,))
    result = corrupt(card, tasks=["seg"], fraction=0.9, out=tmp_path / "noisy")
    truth = read_truth(result.truth_path)
    assert result.counts == {"seg": 11}  # round(0.9 * 12): all the 11 masks that can change
    assert corrupted_ids(truth, "seg") == {f"s{i:02d}" for i in range(12) if i != 4}
    assert len(truth) == 12


def test_same_seed_same_dense_files(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data")
    for out in ("a", "b"):
        corrupt(card, tasks=["seg", "depth"], fraction=0.5, seed=2, out=tmp_path / out)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")


# --- errors: nothing is written --------------------------------------------------------------


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "data")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, float("nan")])
def test_bad_fraction(tmp_path: Path, fraction: float) -> None:
    card = make_features_card(tmp_path / "data")
    with pytest.raises(OptionError, match="fraction must be a number strictly between 0 and 1"):
        corrupt(card, tasks=["kind"], fraction=fraction, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


def test_a_fraction_that_rounds_to_nothing(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=10)
    with pytest.raises(OptionError, match="rounds to 0 labels"):
        corrupt(card, tasks=["kind"], fraction=0.01, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


def test_unknown_task_lists_the_tasks(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data")
    with pytest.raises(
        CardError, match="no task named 'colour'; the card's tasks are: kind, target"
    ):
        corrupt(card, tasks=["kind", "colour"], fraction=0.2, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


def test_unknown_noise_lists_the_choices(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data")
    with pytest.raises(OptionError, match="unknown noise 'gauss'; choose one of add, replace"):
        corrupt(card, tasks=["target"], fraction=0.2, out=tmp_path / "noisy", noise="gauss")


def test_non_empty_out_is_refused_and_left_alone(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data")
    out = tmp_path / "noisy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OptionError, match="noisy exists and is not empty"):
        corrupt(card, tasks=["kind"], fraction=0.2, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == ["noisy"]


def test_an_empty_out_folder_is_used(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data")
    (tmp_path / "noisy").mkdir()
    result = corrupt(card, tasks=["kind"], fraction=0.2, out=tmp_path / "noisy")
    assert result.truth_path.is_file()


def test_a_constant_target_cannot_be_corrupted(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data")
    frame = pd.read_csv(tmp_path / "data" / "manifest.csv")
    frame["t1"] = 2.0
    frame.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    with pytest.raises(
        CardError, match="column 't1' .* has the same value 2 on every training row"
    ):
        corrupt(card, tasks=["target"], fraction=0.2, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


def test_a_crash_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = make_image_card(tmp_path / "data")

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(corruption, "_write_truth", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        corrupt(card, tasks=["seg", "depth"], fraction=0.5, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


def test_an_unreadable_mask_names_the_row(tmp_path: Path) -> None:
    card = make_image_card(tmp_path / "data")
    (tmp_path / "data" / "masks" / "s03.png").write_bytes(b"not a png")
    with pytest.raises(
        CardError, match="row id 's03': column 'mask': cannot read the segmentation map"
    ):
        corrupt(card, tasks=["seg"], fraction=0.5, out=tmp_path / "noisy")
    assert leftovers(tmp_path) == []


# --- the truth file ------------------------------------------------------------------------


def test_truth_file_schema(tmp_path: Path) -> None:
    card = make_features_card(tmp_path / "data", n=20)
    result = corrupt(card, tasks=["kind"], fraction=0.5, out=tmp_path / "noisy")
    schema = pq.read_schema(result.truth_path)
    assert schema.names == ["id", "task", "corrupted", "mode", "magnitude", "detail"]
    assert [str(t) for t in schema.types] == [
        "string",
        "string",
        "bool",
        "string",
        "double",
        "string",
    ]
    truth = read_truth(tmp_path / "noisy")  # the folder works too
    assert truth.corrupted.dtype == bool
    assert truth.id.tolist() == [f"r{i:03d}" for i in range(20)]


def write_parquet(path: Path, **columns: pa.Array) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"id": pa.array(["a"]), "task": pa.array(["t"])}, "missing column 'corrupted'"),
        (
            {"id": pa.array(["a"]), "task": pa.array(["t"]), "corrupted": pa.array([1])},
            "column 'corrupted' must be boolean, found int64",
        ),
        (
            {"id": pa.array([1]), "task": pa.array(["t"]), "corrupted": pa.array([True])},
            "column 'id' must be string, found int64",
        ),
        (
            {
                "id": pa.array(["a", None]),
                "task": pa.array(["t", "t"]),
                "corrupted": pa.array([True, False]),
            },
            "column 'id' has 1 empty value",
        ),
        (
            {
                "id": pa.array(["a", "a"]),
                "task": pa.array(["t", "t"]),
                "corrupted": pa.array([True, False]),
            },
            "id 'a' appears more than once for task 't'",
        ),
    ],
)
def test_read_truth_rejects_bad_files(
    tmp_path: Path, columns: dict[str, pa.Array], message: str
) -> None:
    path = write_parquet(tmp_path / "truth.parquet", **columns)
    with pytest.raises(TruthError, match=message):
        read_truth(path)


def test_read_truth_missing_or_not_parquet(tmp_path: Path) -> None:
    with pytest.raises(TruthError, match="corruption file not found"):
        read_truth(tmp_path / "nope.parquet")
    (tmp_path / "truth.parquet").write_text("id,task,corrupted\n")
    with pytest.raises(TruthError, match="not a readable Parquet file"):
        read_truth(tmp_path / "truth.parquet")


# --- the TOML writer ------------------------------------------------------------------------


def test_toml_writer_round_trips_a_card() -> None:
    document = {
        "table": "data/manifest.parquet",
        "id": "id",
        "note": 'quotes " and \\ and \n newline, ünïcode, tab\t',
        "flag": True,
        "input": {"type": "image", "column": "image", "size": [32, 48]},
        "tasks": {
            "seg": {"type": "segmentation", "column": "mask", "classes": 4, "ignore_index": 255},
            "depth": {"type": "dense-regression", "column": "depth", "scale": 1e-05},
            "odd key": {"type": "classification", "column": "c", "classes": ["a", "b"]},
        },
        "empty": {},
    }
    assert tomllib.loads(toml_dumps(document)) == document
