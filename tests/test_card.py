"""Dataset cards and manifests: parsing, and every kind of invalid input reported before training.

Invalid input (SPEC 3) is one clear ``Error: …`` naming the file, the row id and the column, exit
code 2, no traceback, and nothing written into the run directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_data import whole_batch
from PIL import Image

from ilt_audit.dataset import load_dataset
from ilt_audit.dataset.card import load_card
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.errors import CardError

# --- parsing valid cards --------------------------------------------------------------------------


def test_features_card_is_parsed(features_card):
    card = load_card(features_card)
    assert card.root == features_card.parent.resolve()
    assert card.input.type == "features"
    assert card.input.columns == ("f0", "f1", "f2")
    assert [(t.name, t.type, t.columns) for t in card.tasks] == [
        ("label", "classification", ("label",)),
        ("target", "regression", ("y0", "y1")),
    ]
    assert card.task("label").classes == ("a", "b", "c")


def test_image_card_is_parsed(image_card):
    card = load_card(image_card)
    assert card.input.type == "image"
    assert [t.type for t in card.tasks] == [
        "classification",
        "regression",
        "segmentation",
        "dense-regression",
    ]
    assert card.task("seg").classes == 3
    assert [t.dense for t in card.tasks] == [False, False, True, True]


def test_unknown_task_lists_the_cards_tasks(features_card):
    with pytest.raises(
        CardError, match=r"no task named 'colour'; the card's tasks are: label, target"
    ):
        load_card(features_card).task("colour")


@pytest.mark.parametrize("table", ["manifest.csv", "manifest.parquet", "manifest.jsonl"])
def test_manifest_formats_read_the_same(tmp_path, make_features_card, table):
    manifest = load_manifest(make_features_card(tmp_path / "d", table=table))
    reference = load_manifest(make_features_card(tmp_path / "ref"))
    assert manifest.ids == reference.ids
    assert manifest.class_names == {"label": ("a", "b", "c")}
    task = manifest.card.task("label")
    assert np.array_equal(manifest.class_index(task), reference.class_index(task))


def test_ids_are_read_as_text(features_card):
    frame = pd.read_csv(features_card.parent / "manifest.csv")
    frame["id"] = [f"{i:03d}" for i in range(len(frame))]  # numeric-looking, leading zeros
    frame.to_csv(features_card.parent / "manifest.csv", index=False)
    assert load_manifest(features_card).ids[:3] == ["000", "001", "002"]


def test_feature_prefix_selects_columns(features_card):
    text = features_card.read_text().replace('columns = ["f0", "f1", "f2"]', 'prefix = "f"')
    features_card.write_text(text)
    assert load_manifest(features_card).input_columns == ("f0", "f1", "f2")


def test_declared_classes_keep_their_order_and_may_be_absent(features_card):
    text = features_card.read_text().replace(
        'classes = ["a", "b", "c"]', 'classes = ["c", "b", "a", "z"]'
    )
    features_card.write_text(text)
    manifest = load_manifest(features_card)
    assert manifest.class_names["label"] == ("c", "b", "a", "z")
    labels = manifest.frame["label"].tolist()
    assert manifest.class_index(manifest.card.task("label")).tolist() == [
        ("c", "b", "a").index(v) for v in labels
    ]


def test_undeclared_integer_classes_sort_numerically(features_card):
    frame = pd.read_csv(features_card.parent / "manifest.csv")
    frame["label"] = [(2, 10, 1)[i % 3] for i in range(len(frame))]
    frame.to_csv(features_card.parent / "manifest.csv", index=False)
    text = features_card.read_text().replace('classes = ["a", "b", "c"]\n', "")
    features_card.write_text(text)
    assert load_manifest(features_card).class_names["label"] == ("1", "2", "10")


def test_card_hash_covers_the_manifest(features_card):
    before = load_card(features_card).sha256()
    table = features_card.parent / "manifest.csv"
    table.write_text(table.read_text().replace("r003", "r999"))
    assert load_card(features_card).sha256() != before


def test_image_dataset_decodes_every_task(image_card):
    data = load_dataset(image_card)
    batch = whole_batch(data)
    assert batch["input"].shape == (12, 3, 16, 16) and batch["input"].dtype == torch.float32
    # images are normalised per channel with the statistics of the validation pass
    pixels = batch["input"].transpose(0, 1).reshape(3, -1)
    assert torch.allclose(pixels.mean(dim=1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(pixels.std(dim=1), torch.ones(3), atol=1e-3)
    targets = batch["targets"]
    assert targets["colour"].dtype == torch.int64
    assert targets["geometry"].shape == (12, 2)
    # masks stay small until they are on the device
    assert targets["seg"].shape == (12, 16, 16) and targets["seg"].dtype == torch.uint8
    assert set(targets["seg"].unique().tolist()) <= {0, 1, 2}
    assert targets["depth"].shape == (12, 16, 16) and targets["depth"].dtype == torch.float32
    assert (
        abs(float(targets["depth"].mean())) < 1e-4 and abs(float(targets["depth"].std()) - 1) < 1e-3
    )
    # regression targets are z-scored so that every task's loss starts near 1
    geometry = targets["geometry"]
    assert torch.allclose(geometry.mean(dim=0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(geometry.std(dim=0), torch.ones(2), atol=1e-5)
    assert [data.out_features(t) for t in data.card.tasks] == [3, 2, 3, 1]


def test_ignore_index_pixels_are_allowed_in_masks(image_card):
    text = image_card.read_text().replace("classes = 3\n", "classes = 3\nignore_index = 255\n")
    image_card.write_text(text)
    mask_path = image_card.parent / "masks" / "i000.png"
    mask = np.array(Image.open(mask_path))
    mask[0, :] = 255
    Image.fromarray(mask).save(mask_path)
    assert (whole_batch(load_dataset(image_card))["targets"]["seg"][0, 0] == 255).all()


# --- invalid input: one case per kind of error, through `ilt-audit train` -------------------------


def _set(row_id: str, column: str, value: object) -> Callable[[Path], None]:
    def mutate(card: Path) -> None:
        path = card.parent / "manifest.csv"
        frame = pd.read_csv(path, dtype={"id": str}).astype(object)
        frame.loc[frame["id"] == row_id, column] = value
        frame.to_csv(path, index=False)

    return mutate


def _replace_in_card(old: str, new: str) -> Callable[[Path], None]:
    def mutate(card: Path) -> None:
        text = card.read_text()
        assert old in text
        card.write_text(text.replace(old, new))

    return mutate


def _delete(relative: str) -> Callable[[Path], None]:
    return lambda card: (card.parent / relative).unlink()


def _write_bytes(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda card: (card.parent / relative).write_bytes(data)


def _truncate(relative: str, size: int) -> Callable[[Path], None]:
    def mutate(card: Path) -> None:
        path = card.parent / relative
        path.write_bytes(path.read_bytes()[:size])

    return mutate


def _write_mask(relative: str, mask: np.ndarray) -> Callable[[Path], None]:
    return lambda card: Image.fromarray(mask.astype(np.uint8)).save(card.parent / relative)


def _null_id(card: Path) -> None:
    path = card.parent / "manifest.csv"
    frame = pd.read_csv(path, dtype={"id": str}).astype(object)
    frame.loc[3, "id"] = None
    frame.to_csv(path, index=False)


def _header_only(card: Path) -> None:
    path = card.parent / "manifest.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")


def _nan_depth(card: Path) -> None:
    depth = np.full((16, 16), 1.0, dtype=np.float32)
    depth[3, 4] = np.nan
    np.save(card.parent / "depth" / "i006.npy", depth)


_OUTSIDE_MASK = np.zeros((16, 16))
_OUTSIDE_MASK[5, 5] = 7

CASES = [
    pytest.param(
        "features",
        _delete("manifest.csv"),
        ["manifest.csv", "manifest table not found"],
        id="missing-manifest",
    ),
    pytest.param(
        "features",
        _replace_in_card('"f2"]', '"f9"]'),
        ["manifest.csv", "column 'f9' not found", "the table's columns are: id, f0, f1, f2, label"],
        id="unknown-input-column",
    ),
    pytest.param(
        "features",
        _replace_in_card('column = "label"', 'column = "labels"'),
        ["manifest.csv", "column 'labels' (task 'label') not found"],
        id="unknown-task-column",
    ),
    pytest.param(
        "features",
        _replace_in_card('id = "id"', 'id = "key"'),
        ["manifest.csv", "column 'key' not found"],
        id="unknown-id-column",
    ),
    pytest.param(
        "features",
        _set("r005", "id", "r002"),
        ["manifest.csv", "row id 'r002'", "column 'id'", "the id appears more than once"],
        id="duplicate-id",
    ),
    pytest.param(
        "features",
        _null_id,
        ["manifest.csv", "row 4", "column 'id'", "the instance id is empty"],
        id="null-id",
    ),
    pytest.param(
        "features",
        _set("r005", "label", "d"),
        [
            "manifest.csv",
            "row id 'r005'",
            "column 'label'",
            "label outside the class set ['a', 'b', 'c']",
            "(value: 'd')",
        ],
        id="label-outside-classes",
    ),
    pytest.param(
        "features",
        _set("r007", "y1", float("nan")),
        ["manifest.csv", "row id 'r007'", "column 'y1'", "the target is missing or NaN"],
        id="nan-target",
    ),
    pytest.param(
        "features",
        _set("r009", "f1", "abc"),
        [
            "manifest.csv",
            "row id 'r009'",
            "column 'f1'",
            "the feature is not a finite number",
            "'abc'",
        ],
        id="non-numeric-feature",
    ),
    pytest.param(
        "features",
        _header_only,
        ["manifest.csv", "the manifest table has no rows"],
        id="empty-table",
    ),
    pytest.param(
        "features",
        _write_bytes("card.toml", b'table = "manifest.csv\n[input\n'),
        ["card.toml", "not a valid TOML file"],
        id="bad-toml",
    ),
    pytest.param(
        "features",
        _replace_in_card('type = "regression"', 'type = "ranking"'),
        [
            "card.toml",
            "type must be one of classification, regression, segmentation, dense-regression, "
            "multi-label, got 'ranking'",
        ],
        id="unknown-task-type",
    ),
    pytest.param(
        "features",
        lambda card: card.write_text(
            card.read_text() + '\n[tasks.depth]\ntype = "dense-regression"\ncolumn = "y0"\n'
        ),
        ["card.toml", "task 'depth' is a dense task, which needs an image input"],
        id="dense-task-with-features-input",
    ),
    pytest.param(
        "image",
        _write_bytes("images/i003.png", b"these bytes are not a PNG image"),
        [
            "manifest.csv",
            "row id 'i003'",
            "column 'image'",
            "cannot decode the image",
            "images/i003.png",
        ],
        id="unreadable-image",
    ),
    pytest.param(
        "image",
        _truncate("images/i001.png", 60),
        [
            "manifest.csv",
            "row id 'i001'",
            "column 'image'",
            "cannot decode the image",
            "images/i001.png",
        ],
        id="truncated-image",
    ),
    pytest.param(
        "image",
        _delete("images/i002.png"),
        ["manifest.csv", "row id 'i002'", "column 'image'", "file not found", "images/i002.png"],
        id="missing-image",
    ),
    pytest.param(
        "image",
        _write_mask("masks/i004.png", np.zeros((8, 8))),
        ["manifest.csv", "row id 'i004'", "column 'mask'", "map is 8x8 but the image is 16x16"],
        id="mask-wrong-size",
    ),
    pytest.param(
        "image",
        _write_mask("masks/i005.png", _OUTSIDE_MASK),
        [
            "manifest.csv",
            "row id 'i005'",
            "column 'mask'",
            "mask value 7 is outside the classes 0..2",
        ],
        id="mask-value-outside-classes",
    ),
    pytest.param(
        "image",
        _write_mask("masks/i007.png", np.zeros((16, 16, 3))),
        ["manifest.csv", "row id 'i007'", "column 'mask'", "a mask must be a single-channel PNG"],
        id="rgb-mask",
    ),
    pytest.param(
        "image",
        _nan_depth,
        ["manifest.csv", "row id 'i006'", "column 'depth'", "NaN or infinite"],
        id="nan-in-depth-map",
    ),
]


@pytest.mark.parametrize(("kind", "mutate", "fragments"), CASES)
def test_invalid_input_is_reported_before_training(
    tmp_path, make_features_card, make_image_card, cli, kind, mutate, fragments
):
    card = (make_features_card if kind == "features" else make_image_card)(tmp_path / "data")
    mutate(card)
    out = tmp_path / "run"

    result = cli("train", card, "--out", out, "--epochs", "1", "--device", "cpu")

    assert result.exit_code == 2, result.stderr
    assert isinstance(result.exception, SystemExit)  # a handled error, not a crash
    assert result.err.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1  # one line
    for fragment in fragments:
        assert fragment in result.err
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()

    out.mkdir()  # an existing, empty run directory is accepted, and stays empty
    again = cli("train", card, "--out", out, "--epochs", "1", "--device", "cpu")
    assert again.exit_code == 2
    assert list(out.iterdir()) == []


def test_missing_card_file(tmp_path, cli):
    result = cli("train", tmp_path / "nope.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "nope.toml: dataset card not found" in result.err
    assert not (tmp_path / "run").exists()


def test_error_messages_keep_square_brackets(features_card, tmp_path, cli):
    text = features_card.read_text()
    features_card.write_text(text.replace('type = "regression"', 'type = "ranking"'))
    result = cli("train", features_card, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "[tasks.target]: type must be one of" in result.err

    features_card.write_text(text + '\n[tasks.depth]\ntype = "dense-regression"\ncolumn = "y0"\n')
    result = cli("train", features_card, "--out", tmp_path / "run")
    assert '[input] type is "features"' in result.err


def test_invalid_card_leaves_an_existing_run_untouched(
    features_card, tmp_path, tiny, cli, files_of
):
    from ilt_audit.training.loop import train

    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    before = files_of(run)
    _set("r005", "label", "d")(features_card)

    result = cli("train", features_card, "--out", run, "--epochs", "1")

    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert files_of(run) == before


def test_unreadable_image_on_resume_leaves_the_run_untouched(
    image_card, tmp_path, tiny, cli, files_of
):
    from ilt_audit.training.loop import train

    run = tmp_path / "run"
    train(image_card, run, config=tiny(epochs=1, batch_size=4))
    before = files_of(run)
    # the card and manifest are unchanged (same hash); one image file went bad since, and the
    # change is accepted: the validation pass still stops at it
    (image_card.parent / "images" / "i003.png").write_bytes(b"not a png any more")

    result = cli(
        "train", image_card, "--out", run, "--resume", "--epochs", "2", "--accept-changed-files"
    )

    assert result.exit_code == 2
    assert "row id 'i003'" in result.err and "column 'image'" in result.err
    assert "cannot decode the image" in result.err
    assert files_of(run) == before
