"""What recording the evidence costs an epoch (issue 20): this tree against an earlier commit.

The earlier commit (``--base``, default the last one before the evidence) is checked out into a
temporary git worktree; both versions then train the same cards in turn, base then this tree,
``--rounds`` times, the order alternating (paired, so that a machine whose speed drifts affects
both alike), one CPU
thread, no DataLoader workers, and each round's median epoch time is compared. The medians of
the per-round ratios go into ``docs/benchmarks.md`` between the ``evidence-cost`` markers.

Example:
    python benchmarks/evidence_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import OUT_MD, ROOT, write_block  # noqa: E402

BASE = "0ba9fa8"  # the last commit before the evidence columns
EPOCH = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from ilt_audit.training.loop import TrainConfig, train
out = Path(tempfile.mkdtemp())
train(sys.argv[2], out / "run", config=TrainConfig(epochs=int(sys.argv[3]), device="cpu",
      workers=0, seed=0, batch_size=int(sys.argv[4])))
print(json.dumps([json.loads(l)["time_s"] for l in (out / "run" / "metrics.jsonl").open()]))
"""


def epoch_seconds(tree: Path, card: Path, epochs: int, batch: int) -> float:
    """The median epoch time of one training run of ``card`` with the package in ``tree``."""
    done = subprocess.run(
        [sys.executable, "-c", EPOCH, str(tree), str(card), str(epochs), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return statistics.median(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"the earlier commit (default {BASE})")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--out-md", type=Path, default=OUT_MD)
    parser.add_argument(
        "--features-card",
        type=Path,
        help="also a features card, trained with batch 256 (e.g. the 100,000-row card that "
        "benchmarks/throughput.py writes into its work folder): the small network, where the "
        "evidence is the largest share of a step",
    )
    args = parser.parse_args()
    cards = {
        "shapes (600 images, 4 task types), batch 32": (
            ROOT / "sample_manifests/shapes/card.toml",
            32,
        )
    }
    if args.features_card is not None:
        cards[f"features ({args.features_card.parent.name}), batch 256"] = (args.features_card, 256)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            rows = []
            for name, (card, batch) in cards.items():
                pairs = []
                for round_ in range(args.rounds):
                    if round_ % 2:  # the order alternates: neither always runs on a warm cache
                        after = epoch_seconds(ROOT, card, args.epochs, batch)
                        before = epoch_seconds(base, card, args.epochs, batch)
                    else:
                        before = epoch_seconds(base, card, args.epochs, batch)
                        after = epoch_seconds(ROOT, card, args.epochs, batch)
                    pairs.append((before, after))
                    print(f"{name} round {round_ + 1}: {before:.2f} s → {after:.2f} s")
                ratio = statistics.median(a / b for b, a in pairs)
                rows.append(
                    f"| {name} | {statistics.median(b for b, _ in pairs):.2f} | "
                    f"{statistics.median(a for _, a in pairs):.2f} | {ratio:.3f} | "
                    f"{'met' if ratio <= 1.05 else '**not met**'} |"
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "-f", str(base)])
    block = "\n".join(
        [
            "## What the evidence costs an epoch (issue 20)",
            "",
            f"- Produced by: `python benchmarks/evidence_cost.py --rounds {args.rounds}"
            + (" --features-card CARD" if args.features_card is not None else "")
            + "` "
            f"(base {args.base}, the commit before the evidence columns)",
            f"- Paired rounds in alternating order, one CPU thread, no DataLoader workers, "
            f"{args.epochs} epochs a run; "
            "a round's figure is its run's median epoch. Target: ≤ 1.05× the base's epoch.",
            "",
            "| data | base epoch (s) | with evidence (s) | median ratio | ≤ 1.05× |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    write_block(args.out_md, "evidence-cost", block)
    print(block)


if __name__ == "__main__":
    main()
