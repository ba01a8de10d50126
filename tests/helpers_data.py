"""Tiny seeded datasets written into a folder, for tests: plain functions, no pytest fixtures.

- :func:`make_features_card`: a features input with a classification task ``kind`` and a
  two-column regression task ``target``;
- :func:`make_image_card`: 16x16 RGB images with all four task types: ``shape``
  (classification), ``box`` (regression), ``seg`` (segmentation, 3 classes, ignore_index 255)
  and ``depth`` (dense regression, ``.npy`` or 16-bit PNG with a scale);
- :func:`make_tags_card`: a features input with a multi-label task ``tags`` whose tags the
  features decide.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

KINDS = ("ant", "bee", "cat")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a manifest as CSV, Parquet or JSON Lines, by the file's extension."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, double_precision=15)


def make_features_card(
    root: Path,
    *,
    n: int = 40,
    table: str = "manifest.csv",
    split: bool = False,
    int_labels: bool = False,
    seed: int = 0,
) -> Path:
    """A features dataset: f0..f2, ``kind`` (3 classes) and ``target`` (columns t0, t1).

    With ``split``, every fourth row is a validation row. With ``int_labels``, the classes are
    0, 1, 2 instead of names. Returns the card's path.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    kind = rng.integers(0, 3, size=n)
    kind[:3] = [0, 1, 2]  # every class present
    frame = pd.DataFrame(
        {
            "id": [f"r{i:03d}" for i in range(n)],
            "f0": rng.normal(size=n),
            "f1": rng.normal(size=n),
            "f2": rng.normal(size=n),
            "kind": kind if int_labels else [KINDS[k] for k in kind],
            "t0": rng.uniform(2.0, 5.0, size=n),
            "t1": rng.uniform(-1.0, 1.0, size=n),
            "note": [f"row {i}" for i in range(n)],
        }
    )
    split_line = ""
    if split:
        frame["split"] = ["val" if i % 4 == 3 else "train" for i in range(n)]
        split_line = 'split = "split"\n'
    write_table(frame, root / table)
    card = root / "card.toml"
    card.write_text(
        f'table = "{table}"\nid = "id"\n{split_line}\n'
        '[input]\ntype = "features"\ncolumns = ["f0", "f1", "f2"]\n\n'
        '[tasks.kind]\ntype = "classification"\ncolumn = "kind"\n\n'
        '[tasks.target]\ntype = "regression"\ncolumns = ["t0", "t1"]\n',
        encoding="utf-8",
    )
    return card


def make_image_card(
    root: Path,
    *,
    n: int = 12,
    size: int = 16,
    depth: str = "npy",
    blank_mask_rows: tuple[int, ...] = (),
    seed: int = 0,
) -> Path:
    """An image dataset with all four task types; returns the card's path.

    ``depth="png16"`` stores depth maps as 16-bit PNGs in millimetres (card ``scale = 1000``).
    The masks of ``blank_mask_rows`` are entirely ``ignore_index`` (no labelled pixel).
    """
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"s{i:02d}"
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        mask = rng.integers(0, 3, size=(size, size)).astype(np.uint8)
        mask[0, :4] = 255  # a few unlabelled pixels
        if i in blank_mask_rows:
            mask[:] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        values = rng.uniform(0.5, 3.0, size=(size, size)).astype(np.float32)
        if depth == "npy":
            depth_file = f"depth/{name}.npy"
            np.save(root / depth_file, values)
        else:
            depth_file = f"depth/{name}.png"
            Image.fromarray(np.round(values * 1000).astype(np.uint16)).save(root / depth_file)
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "shape": KINDS[i % 3],
                "x": float(rng.uniform(0, 1)),
                "y": float(rng.uniform(0, 1)),
                "mask": f"masks/{name}.png",
                "depth": depth_file,
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    scale = "scale = 1000\n" if depth == "png16" else ""
    card = root / "card.toml"
    card.write_text(
        'table = "manifest.csv"\nid = "id"\n\n'
        '[input]\ntype = "image"\ncolumn = "image"\n\n'
        '[tasks.shape]\ntype = "classification"\ncolumn = "shape"\n\n'
        '[tasks.box]\ntype = "regression"\ncolumns = ["x", "y"]\n\n'
        '[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 3\nignore_index = 255\n\n'
        f'[tasks.depth]\ntype = "dense-regression"\ncolumn = "depth"\n{scale}',
        encoding="utf-8",
    )
    return card


TAGS = ("cat", "dog", "owl", "fox")


def make_tags_card(
    root: Path,
    *,
    n: int = 40,
    table: str = "manifest.parquet",
    seed: int = 0,
    classes: bool = True,
    separator: str | None = None,
    split: bool = False,
) -> Path:
    """A features dataset (f0..f3) with a multi-label task ``tags``: tag j of :data:`TAGS` is
    present where feature j is above 0.3 (learnable; some rows have none). A Parquet or JSON
    Lines table holds a list per row, a CSV table text joined by ``separator`` (default "|").
    ``classes`` declares the tag set in the card; with ``split``, every sixth row is a
    validation row. Returns the card's path.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    x = rng.normal(size=(n, len(TAGS)))
    tags = [[TAGS[j] for j in np.flatnonzero(row > 0.3)] for row in x]
    frame = pd.DataFrame({"id": [f"r{i:03d}" for i in range(n)]})
    for j in range(len(TAGS)):
        frame[f"f{j}"] = x[:, j]
    text = Path(table).suffix == ".csv"
    frame["tags"] = [(separator or "|").join(t) for t in tags] if text else tags
    lines = [f'table = "{table}"', 'id = "id"']
    if split:
        frame["split"] = ["val" if i % 6 == 5 else "train" for i in range(n)]
        lines.append('split = "split"')
    write_table(frame, root / table)
    lines += ["", "[input]", 'type = "features"']
    lines += ['prefix = "f"', "", "[tasks.tags]", 'type = "multi-label"', 'column = "tags"']
    if classes:
        lines.append("classes = [" + ", ".join(f'"{t}"' for t in TAGS) + "]")
    if separator is not None:
        lines.append(f'separator = "{separator}"')
    card = root / "card.toml"
    card.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return card


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def whole_batch(data, rows=None, workers: int = 0) -> dict:
    """Every row of a loaded data set (or ``rows``) as one batch, as the training loader gives it."""
    from ilt_audit.dataset.loader import make_loader

    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    loader = make_loader(data.instances(rows), batch_size=len(rows), workers=workers)
    return next(iter(loader))


# --- Hugging Face exports: images stored in the table ---------------------------------------

IMAGE_STRUCT = "struct<bytes: binary, path: string>"  # datasets' Image feature, in Arrow


def png_bytes(array: np.ndarray) -> bytes:
    """An array encoded as PNG, as a Hugging Face ``Image`` column stores it."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_table(n: int = 12, *, size: int = 16, mask: bool = False, seed: int = 0):
    """A table as ``datasets`` exports it: an ``Image`` column ``image`` (PNG bytes and a file
    name), a ``ClassLabel`` column ``label`` (ints, the names ``KINDS`` in the features) and,
    with ``mask``, an ``Image`` column ``mask`` of 3-class masks; no id column. The features are
    in the schema's ``huggingface`` metadata."""
    import json

    import pyarrow as pa

    rng = np.random.default_rng(seed)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    label = np.arange(n) % 3
    images = [
        {"bytes": png_bytes(_coloured(rng, size, k)), "path": f"{i:05d}.png"}
        for i, k in enumerate(label)
    ]
    columns = {"image": pa.array(images, struct), "label": pa.array(label, pa.int64())}
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(KINDS), "_type": "ClassLabel"},
    }
    if mask:
        masks = [
            {
                "bytes": png_bytes(rng.integers(0, 3, size=(size, size)).astype(np.uint8)),
                "path": None,
            }
            for _ in range(n)
        ]
        columns["mask"] = pa.array(masks, struct)
        features["mask"] = {"_type": "Image"}
    table = pa.table(columns)
    metadata = {"info": {"features": features}}
    return table.replace_schema_metadata({"huggingface": json.dumps(metadata)})


def _coloured(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """An image whose dominant channel is its class, so that a tiny network learns something."""
    image = rng.integers(0, 96, size=(size, size, 3), dtype=np.uint8)
    image[..., k] += 128
    return image


def write_saved(folder: Path, table, *, shards: int = 2) -> Path:
    """Write a table as ``Dataset.save_to_disk`` does: Arrow IPC stream shards
    ``data-0000i-of-0000N.arrow``, ``state.json`` listing them, ``dataset_info.json`` with the
    features (taken from the table's ``huggingface`` metadata)."""
    import json

    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    names = []
    for i in range(shards):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        with (
            pa.OSFile(str(folder / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as w,
        ):
            w.write_table(part)
        names.append(name)
    info = json.loads(table.schema.metadata[b"huggingface"])["info"]
    (folder / "dataset_info.json").write_text(json.dumps({"features": info["features"]}))
    state = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "train",
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return folder
