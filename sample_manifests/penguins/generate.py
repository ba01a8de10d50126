"""Generate the ``penguins`` sample dataset (features input) for ilt-audit.

Source: the Palmer penguins data (Gorman, Williams & Fraser 2014; packaged by
Horst, Hill & Gorman), CC0, as shipped by the ``palmerpenguins`` PyPI package.
That package is only needed to regenerate this sample; it is not a dependency
of ilt-audit:

    pip install palmerpenguins
    python sample_manifests/penguins/generate.py

Rows with a missing value in any used column are dropped; the remaining rows
keep their original order and get ids p000, p001, ...  Writes manifest.csv next
to this file.
"""

from __future__ import annotations

from pathlib import Path

from palmerpenguins import load_penguins

HERE = Path(__file__).resolve().parent
COLUMNS = [
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
    "species",
    "island",
    "sex",
]


def main() -> None:
    df = load_penguins()[COLUMNS].dropna().reset_index(drop=True)
    width = max(3, len(str(len(df) - 1)))
    df.insert(0, "id", [f"p{i:0{width}d}" for i in range(len(df))])
    # numeric columns stay float (e.g. 3750.0) so the regression target reads as float
    df.to_csv(HERE / "manifest.csv", index=False)
    print(f"wrote {len(df)} rows to {HERE / 'manifest.csv'}")


if __name__ == "__main__":
    main()
