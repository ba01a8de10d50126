"""Generate the synthetic ``shapes`` sample dataset for ilt-audit.

Writes, next to this file:

* ``images/sNNNN.png``  32x32 RGB images of one shape on a textured background
* ``masks/sNNNN.png``   32x32 uint8 class-index masks (0 bg, 1 circle, 2 square, 3 triangle)
* ``depth/sNNNN.npy``   32x32 float32 depth/height maps, values in [0, 1]
* ``manifest.csv``      one row per instance (id, image, shape, cx, cy, size, mask, depth)

Every instance carries four tasks: ``shape`` (classification), ``geometry``
(regression of the normalised bounding-box centre and side: cx, cy, size),
``seg`` (segmentation) and ``depth`` (dense regression).  The labels are clean;
label noise for audits is meant to be injected by the caller.

Deterministic (fixed seed), depends only on numpy and Pillow.

    python sample_manifests/shapes/generate.py

``--n`` and ``--out`` write a larger (or smaller) set elsewhere, with the card; its first 600
instances are the shipped ones:

    python sample_manifests/shapes/generate.py --n 2400 --out /tmp/shapes2400
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20240611
N = 600
H = W = 32
SS = 4  # supersampling factor used for anti-aliased coverage
MIN_SIZE, MAX_SIZE = 8.0, 20.0  # side of the shape's bounding box, in pixels
MARGIN = 1.0  # keep the shape at least this far from the image border
SHAPES = ("circle", "square", "triangle")  # mask class = index + 1

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


def make_instance(rng: np.random.Generator) -> dict:
    k = int(rng.integers(len(SHAPES)))
    shape = SHAPES[k]
    s = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    lo, hi = s / 2 + MARGIN, W - s / 2 - MARGIN
    cx = float(rng.uniform(lo, hi))
    cy = float(rng.uniform(lo, hi))
    orient = int(rng.integers(4))

    cov = coverage(shape, cx, cy, s, orient)
    mask = np.where(cov >= 0.5, k + 1, 0).astype(np.uint8)

    # Depth: a tilted background plane plus the shape raised as a domed plateau.
    base = rng.uniform(0.15, 0.35)
    gx, gy = rng.uniform(-0.15, 0.15, size=2)
    plane = base + gx * (_PX / W - 0.5) + gy * (_PY / H - 0.5)
    height = rng.uniform(0.30, 0.50)
    r = np.sqrt((_PX - cx) ** 2 + (_PY - cy) ** 2) / (s / 2)
    dome = 0.75 + 0.25 * np.clip(1.0 - r * r, 0.0, 1.0)
    depth = np.clip(plane + height * cov * dome, 0.0, 1.0).astype(np.float32)

    # Colours: random background and a shape colour that differs clearly from it.
    bg = rng.uniform(40, 200, size=3)
    while True:
        fg = rng.uniform(30, 225, size=3)
        if np.linalg.norm(fg - bg) > 90:
            break

    # Shading: brightness grows with depth, so depth is visible in the image.
    shade = (0.55 + 0.75 * depth)[..., None]
    # Mild texture: a soft diagonal ripple on the background plus pixel noise.
    phase = rng.uniform(0, 2 * np.pi)
    freq = rng.uniform(0.25, 0.6)
    ang = rng.uniform(0, np.pi)
    ripple = 5.0 * np.sin(freq * (np.cos(ang) * _PX + np.sin(ang) * _PY) + phase)
    colour = bg[None, None, :] * (1 - cov[..., None]) + fg[None, None, :] * cov[..., None]
    img = colour * shade
    img += (ripple * (1 - cov))[..., None]
    img += rng.normal(0.0, 3.0, size=img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    return {
        "shape": shape,
        "cx": cx / W,
        "cy": cy / H,
        "size": s / W,
        "image": img,
        "mask": mask,
        "depth": depth,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the shapes sample dataset.")
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
        iid = f"s{i:04d}"
        img_rel, mask_rel, depth_rel = f"images/{iid}.png", f"masks/{iid}.png", f"depth/{iid}.npy"
        Image.fromarray(inst["image"], mode="RGB").save(out / img_rel, optimize=True)
        Image.fromarray(inst["mask"], mode="L").save(out / mask_rel, optimize=True)
        np.save(out / depth_rel, inst["depth"])
        rows.append(
            {
                "id": iid,
                "image": img_rel,
                "shape": inst["shape"],
                "cx": f"{inst['cx']:.4f}",
                "cy": f"{inst['cy']:.4f}",
                "size": f"{inst['size']:.4f}",
                "mask": mask_rel,
                "depth": depth_rel,
            }
        )

    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["id", "image", "shape", "cx", "cy", "size", "mask", "depth"]
        )
        writer.writeheader()
        writer.writerows(rows)
    if out.resolve() != HERE:
        shutil.copyfile(HERE / "card.toml", out / "card.toml")
    print(f"wrote {args.n} instances to {out}")


if __name__ == "__main__":
    main()
