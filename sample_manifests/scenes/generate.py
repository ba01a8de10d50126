"""Generate the synthetic ``scenes`` sample dataset for ilt-audit: several objects per image.

In ``shapes`` every mask holds one object, so an object left out of a mask empties it, which no
real dataset does. Here every image holds 2 to 4 separate objects, so a mask that misses one
still shows the others: the omission an annotator actually makes.

Writes, next to this file:

* ``images/cNNNN.png``  48x48 RGB images of 2-4 non-overlapping shapes on a textured background
* ``masks/cNNNN.png``   48x48 uint8 class-index masks (0 bg, 1 circle, 2 square, 3 triangle)
* ``depth/cNNNN.png``   48x48 16-bit depth/height maps in [0, 1], stored x 1000 (the card's ``scale``)
* ``manifest.csv``      one row per instance (id, image, mask, count, dominant, depth)

Every instance carries four tasks: ``seg`` (segmentation), ``count`` (regression: the number of
objects), ``depth`` (dense regression) and ``dominant`` (classification: the class of the
largest object).  The labels are clean; label noise for audits is meant to be injected by the
caller.  Each class has its own colour family (circles warm, squares green, triangles blue) with
per-object jitter, on a desaturated background striped by a two-tone ripple.  To keep the
sample small (about 1.5 MB) the depth maps are 16-bit PNGs rather than ``.npy`` files (a 48x48
float32 ``.npy`` takes 9 kB, the PNG under 1 kB) and the images have no per-pixel noise.

Deterministic (fixed seed), depends only on numpy and Pillow.

    python sample_manifests/scenes/generate.py

``--n`` and ``--out`` write a larger (or smaller) set elsewhere, with the card; its first 600
instances are the shipped ones:

    python sample_manifests/scenes/generate.py --n 2400 --out /tmp/scenes2400
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20250301
N = 600
H = W = 48
SS = 4  # supersampling factor used for anti-aliased coverage
MIN_OBJECTS, MAX_OBJECTS = 2, 4
MIN_SIZE, MAX_SIZE = 8.0, 17.0  # side of an object's bounding box, in pixels
MARGIN = 1.0  # keep every object at least this far from the image border
GAP = 2.0  # between two objects' bounding boxes: masks keep them apart (8-connected regions)
SHAPES = ("circle", "square", "triangle")  # mask class = index + 1
HUES = {"circle": (0.97, 1.08), "square": (0.25, 0.40), "triangle": (0.56, 0.70)}  # mod 1
DEPTH_SCALE = 1000  # the 16-bit depth PNGs hold value x DEPTH_SCALE (the card's scale)

HERE = Path(__file__).resolve().parent

# Sub-pixel sample positions (pixel centres of the supersampled grid), in pixel units.
_sub = (np.arange(H * SS) + 0.5) / SS
_YS, _XS = np.meshgrid(_sub, _sub, indexing="ij")
# Pixel-centre positions of the output grid.
_pix = np.arange(H) + 0.5
_PY, _PX = np.meshgrid(_pix, _pix, indexing="ij")


def coverage(shape: str, cx: float, cy: float, s: float, orient: int) -> np.ndarray:
    """Fraction of each output pixel covered by the shape (float in [0, 1], HxW)."""
    dx, dy = _XS - cx, _YS - cy
    h = s / 2.0
    if shape == "circle":
        inside = dx * dx + dy * dy <= h * h
    elif shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    else:  # isosceles triangle filling its s x s bounding box, one of 4 orientations
        # rotate the sample grid so that the triangle always "points up" in (u, v)
        u, v = [(dx, dy), (dx, -dy), (dy, dx), (dy, -dx)][orient]
        t = v + h  # distance from the apex line, 0..s
        inside = (t >= 0) & (t <= s) & (np.abs(u) <= t / 2.0)
    return inside.reshape(H, SS, W, SS).mean(axis=(1, 3))


def place(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """``count`` bounding boxes (cx, cy, side) inside the image, at least GAP apart.

    A box that finds no free place in 50 tries is drawn again smaller, so the loop ends.
    """
    boxes: list[tuple[float, float, float]] = []
    while len(boxes) < count:
        top = MAX_SIZE
        for attempt in range(200):
            if attempt and attempt % 50 == 0:
                top = max(MIN_SIZE, top - 3.0)
            s = float(rng.uniform(MIN_SIZE, top))
            lo, hi = s / 2 + MARGIN, W - s / 2 - MARGIN
            cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            if all(max(abs(cx - bx), abs(cy - by)) >= (s + bs) / 2 + GAP for bx, by, bs in boxes):
                boxes.append((cx, cy, s))
                break
        else:  # no room left: start the scene again
            boxes = []
    return boxes


def colour(rng: np.random.Generator, shape: str) -> np.ndarray:
    """An RGB colour (0-255) of the shape's family: its hue range, jittered saturation, value."""
    hue = float(rng.uniform(*HUES[shape])) % 1.0
    saturation = float(rng.uniform(0.55, 0.9))
    value = float(rng.uniform(0.55, 0.85))
    return 255.0 * np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def make_instance(rng: np.random.Generator) -> dict:
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    boxes = place(rng, count)

    # Background: a desaturated colour, a tilted depth plane, two-tone diagonal stripes (hard
    # stripes compress far better in PNG than a soft ripple or pixel noise).
    tint = rng.uniform(-18, 18, size=3)
    bg = rng.uniform(85, 150) + tint
    base = rng.uniform(0.15, 0.35)
    gx, gy = rng.uniform(-0.15, 0.15, size=2)
    depth = base + gx * (_PX / W - 0.5) + gy * (_PY / H - 0.5)
    phase = rng.uniform(0, 2 * np.pi)
    freq = rng.uniform(0.25, 0.6)
    ang = rng.uniform(0, np.pi)
    stripes = 6.0 * np.sign(np.sin(freq * (np.cos(ang) * _PX + np.sin(ang) * _PY) + phase))

    mask = np.zeros((H, W), dtype=np.uint8)
    paint = np.broadcast_to(bg, (H, W, 3)).copy()
    covered = np.zeros((H, W))
    areas = []
    for cx, cy, s in boxes:
        k = int(rng.integers(len(SHAPES)))
        shape = SHAPES[k]
        cov = coverage(shape, cx, cy, s, int(rng.integers(4)))
        mask[cov >= 0.5] = k + 1
        areas.append((float(cov.sum()), shape))
        # the object raised above the plane as a slightly domed plateau
        height = rng.uniform(0.30, 0.50)
        r = np.sqrt((_PX - cx) ** 2 + (_PY - cy) ** 2) / (s / 2)
        depth = depth + height * cov * (0.75 + 0.25 * np.clip(1.0 - r * r, 0.0, 1.0))
        paint += cov[..., None] * (colour(rng, shape)[None, None, :] - paint)
        covered += cov
    depth = np.clip(depth, 0.0, 1.0)

    # Shading: brightness grows with depth, so depth is visible in the image.
    img = paint * (0.6 + 0.7 * depth)[..., None] + (stripes * (1 - covered))[..., None]
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    return {
        "count": count,
        "dominant": max(areas)[1],
        "image": img,
        "mask": mask,
        "depth": np.rint(depth * DEPTH_SCALE).astype(np.uint16),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the scenes sample dataset.")
    parser.add_argument("--n", type=int, default=N, help=f"instances (default {N})")
    parser.add_argument("--out", type=Path, default=HERE, help="folder (default: this one)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    out: Path = args.out
    rng = np.random.default_rng(SEED)
    for sub in ("images", "masks", "depth"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    rows = []
    for i in range(args.n):
        inst = make_instance(rng)
        iid = f"c{i:04d}"
        img_rel, mask_rel, depth_rel = f"images/{iid}.png", f"masks/{iid}.png", f"depth/{iid}.png"
        Image.fromarray(inst["image"], mode="RGB").save(out / img_rel, optimize=True)
        Image.fromarray(inst["mask"], mode="L").save(out / mask_rel, optimize=True)
        Image.fromarray(inst["depth"]).save(out / depth_rel, optimize=True)  # mode I;16
        rows.append(
            {
                "id": iid,
                "image": img_rel,
                "mask": mask_rel,
                "count": inst["count"],
                "dominant": inst["dominant"],
                "depth": depth_rel,
            }
        )

    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "mask", "count", "dominant", "depth"])
        writer.writeheader()
        writer.writerows(rows)
    if out.resolve() != HERE:
        shutil.copyfile(HERE / "card.toml", out / "card.toml")
    print(f"wrote {args.n} instances to {out}")


if __name__ == "__main__":
    main()
