"""An experiment of issue 12: does a second, cross-validated round find near-class confusion?

On scikit-learn's handwritten digits (1,797 8x8 images as 64 features; ``bench`` extra), 40% of the
labels are corrupted with ``corrupt --mode confusion`` (each to the class a cross-validated model
confuses it with most) or ``--mode uniform``. Then:

1. **Round 1**: the library's default `train` (ILT, 30 epochs), scored by the default score.
2. **Round 2**: the instances round 1 scores lowest (``--keep``, default 60%) are trusted; the
   trusted rows are split in ``--folds`` halves, and for each fold a default `train` runs on the
   other folds' trusted rows only (``split`` column). Each instance is then scored by the
   cross-entropy of its given label under the model(s) that did not train on it: every score is
   out of sample, and no model saw the instances round 1 distrusted.

It prints the detection accuracy (paper Table 7) of both rounds per seed. Measured on 2 cores
(2026-11-25, seeds 0, 1, 2, 40% corrupted): confusion 0.752 / 0.702 / 0.701 → 0.811 / 0.798 /
0.783; uniform 0.968 / 0.968 / 0.960 → 0.981 / 0.974 / 0.978. Round 2 costs ``--folds`` more
trainings.

Example:
    python benchmarks/second_round.py --seeds 0,1,2 --mode confusion
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ilt_audit.audit.evaluation import detection_metrics
from ilt_audit.audit.ranking import scores
from ilt_audit.corruption.planting import corrupt
from ilt_audit.dataset import load_dataset, open_dataset
from ilt_audit.dataset.derived import write_split_card
from ilt_audit.training.loop import TrainConfig, predict, saved_normalisation, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import fresh, write_digits  # noqa: E402


def _quiet_train(card: Path, out: Path, config: TrainConfig) -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        train(card, out, config=config)


def second_round(
    card: Path, first: np.ndarray, work: Path, *, keep: float, folds: int, seed: int
) -> np.ndarray:
    """Out-of-sample losses of every row under models trained on round 1's trusted rows."""
    manifest = open_dataset(card).manifest
    n = len(manifest.ids)
    trusted = first <= np.quantile(first, keep)
    fold = np.random.default_rng(seed).integers(0, folds, size=n)
    total, count = np.zeros(n), np.zeros(n)
    for f in range(folds):
        folder = fresh(work / f"fold{f}")
        held = ~(trusted & (fold != f))  # the rows this fold's model does not train on
        fold_card = write_split_card(manifest, folder / "card.toml", held)
        _quiet_train(fold_card, folder / "run", TrainConfig(seed=seed))
        data = load_dataset(fold_card, norm=saved_normalisation(folder / "run"), scan=False)
        logits = predict(folder / "run", data, torch.arange(len(data.ids)))["digit"]
        loss = torch.nn.functional.cross_entropy(logits, data.table["digit"], reduction="none")
        total[held] += loss.numpy()[held]
        count[held] += 1
    return total / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mode", default="confusion")
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--folds", type=int, default=2)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="ilt-audit-second-round-"))
    clean = work / "clean" / "card.toml"
    write_digits(clean)
    for seed in (int(s) for s in args.seeds.split(",")):
        noisy = corrupt(
            clean, tasks=["digit"], fraction=args.fraction, seed=seed, mode=args.mode,
            out=work / f"noisy{seed}",
        )  # fmt: skip
        _quiet_train(noisy.card_path, work / f"run{seed}", TrainConfig(seed=seed))
        first = scores(work / f"run{seed}").set_index("id").score
        ids = open_dataset(noisy.card_path).manifest.ids
        truth = pd.read_parquet(noisy.truth_path).set_index("id").loc[ids, "corrupted"]
        first_scores = first.loc[ids].to_numpy()
        second = second_round(
            noisy.card_path, first_scores, work / f"round2-{seed}",
            keep=args.keep, folds=args.folds, seed=seed,
        )  # fmt: skip
        one = detection_metrics(first_scores, truth.to_numpy())["detection_accuracy"]
        two = detection_metrics(second, truth.to_numpy())["detection_accuracy"]
        print(f"{args.mode}, seed {seed}: round 1 {one:.3f}, round 2 {two:.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
