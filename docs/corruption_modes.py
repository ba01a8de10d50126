"""Draw every dense corruption mode before and after, for the README: docs/corruption-modes.png.

One synthetic instance (an image with a disc and a square, their mask, a depth map) is written as
a one-row dataset card; each segmentation and dense-regression mode then corrupts it through
``ilt_audit.corruption.planting.corrupt`` with its default magnitude and seed 0, and the corrupted map is
read back from the card it wrote. Run from the repository root:

    python docs/corruption_modes.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ilt_audit.corruption.modes import MODES  # noqa: E402
from ilt_audit.corruption.planting import corrupt, read_truth  # noqa: E402
from ilt_audit.dataset.files import read_depth, read_mask  # noqa: E402
from ilt_audit.dataset.manifest import load_manifest  # noqa: E402

SIZE = 48
OUT = Path(__file__).with_name("corruption-modes.png")
CARD = """\
table = "manifest.csv"
id = "id"

[input]
type = "image"
column = "image"

[tasks.seg]
type = "segmentation"
column = "mask"
classes = 3

[tasks.depth]
type = "dense-regression"
column = "depth"
"""


def write_instance(folder: Path) -> Path:
    """A disc (class 1) and a square (class 2) on background, nearer than the sloping floor."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 16) ** 2 + (xx - 15) ** 2 <= 9**2
    square = (yy >= 22) & (yy < 40) & (xx >= 26) & (xx < 42)
    mask = np.where(disc, 1, np.where(square, 2, 0)).astype(np.uint8)
    depth = (6.0 - 3.0 * yy / SIZE).astype(np.float32)  # the floor comes nearer at the bottom
    depth[disc], depth[square] = 2.0, 3.0
    image = np.stack([80 + 60 * (yy / SIZE)] * 3, axis=-1).astype(np.uint8)
    image[disc], image[square] = (220, 60, 40), (40, 90, 220)
    Image.fromarray(image).save(folder / "image.png")
    Image.fromarray(mask).save(folder / "mask.png")
    np.save(folder / "depth.npy", depth)
    (folder / "manifest.csv").write_text(
        "id,image,mask,depth\nx,image.png,mask.png,depth.npy\n", encoding="utf-8"
    )
    card = folder / "card.toml"
    card.write_text(CARD, encoding="utf-8")
    return card


def corrupted(card: Path, task: str, mode: str, out: Path) -> tuple[np.ndarray, str]:
    """The instance's map for ``task`` after ``mode``, and the truth file's detail."""
    result = corrupt(card, tasks=[task], fraction=0.6, mode=mode, out=out)  # 1 of 1 row
    manifest = load_manifest(result.card_path)
    path = manifest.file_path(manifest.frame.at[0, manifest.card.task(task).column])
    truth = read_truth(result.truth_path)
    detail = truth.detail.iloc[0] or ""
    return (read_mask(path) if task == "seg" else read_depth(path)), detail


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        card = write_instance(root)
        rows = {
            task: [(mode, *corrupted(card, task, mode, root / f"{task}-{mode}")) for mode in modes]
            for task, modes in (
                ("seg", MODES["segmentation"]),
                ("depth", MODES["dense-regression"]),
            )
        }
        image = np.asarray(Image.open(card.parent / "image.png"))
        clean = {
            "seg": read_mask(card.parent / "mask.png"),
            "depth": read_depth(root / "depth.npy"),
        }
    columns = 1 + max(len(r) for r in rows.values())
    figure, axes = plt.subplots(3, columns, figsize=(2.0 * columns, 6.6))
    for ax in axes.ravel():
        ax.set_axis_off()
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize=9)
    low, high = 0.0, float(clean["depth"].max()) * 1.2
    styles = {"seg": {"cmap": "tab10", "vmin": 0, "vmax": 9}, "depth": {"cmap": "viridis"}}
    for line, task in ((1, "seg"), (2, "depth")):
        style = styles[task] if task == "seg" else {**styles[task], "vmin": low, "vmax": high}
        axes[line, 0].imshow(clean[task], **style)
        axes[line, 0].set_title(f"{task}: clean", fontsize=9)
        for column, (mode, array, detail) in enumerate(rows[task], start=1):
            axes[line, column].imshow(array, **style)
            axes[line, column].set_title(f"{mode}\n{detail[:22]}", fontsize=8)
    figure.suptitle(
        "corrupt --mode: segmentation (middle) and dense regression (bottom), default magnitudes, "
        "seed 0; one colour scale per row",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
