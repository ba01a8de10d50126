"""What ILT is compared with on the same data: cleanlab, and the ceiling of what the data shows.

Both train the library's own network (``weighting="equal"``, the other options as given) in
k-fold cross-validation, so that every label is scored by a network that never trained on its
instance, and both give a per-instance score table, ``id, task, score`` (higher: more suspect),
in the manifest's row order. :func:`ilt_audit.audit.evaluation.detection_metrics` measures it
against the planted errors as it measures ILT's scores.

- :func:`cleanlab_scores`: cleanlab's ``get_label_quality_scores`` on the out-of-fold predicted
  probabilities of the networks trained on the given (possibly wrong) labels; the score is
  ``1 - quality``. Classification tasks (``cleanlab.rank``, softmax probabilities, the folds
  stratified by label as cleanlab's own cross-validation is) and multi-label tasks
  (``cleanlab.multilabel_classification``, a sigmoid per tag, plain shuffled folds: cleanlab
  offers no iterative stratification, and stratifying by tag set fails where most sets are
  unique). cleanlab and scikit-learn are the optional ``bench`` extra
  (``pip install "ilt-audit[bench]"``); without them it raises :class:`OptionError`.
- The ceiling: :func:`ceiling_folds` trains the networks on the *clean* labels of the other
  folds, :func:`ceiling_scores` scores each given label of a corrupted copy by its
  :func:`disagreement` with the network that never saw its instance. The most any method could
  see in the data short of the truth: a confusion between look-alike classes may be invisible
  even to it. The networks depend on the clean data only, so one set serves every corrupted copy
  of it (every task, mode and fraction).

Example:
    >>> folds = ceiling_folds("clean/card.toml", "runs/ceiling", seed=0)  # doctest: +SKIP
    >>> table = ceiling_scores(folds, "noisy/card.toml", "species")  # doctest: +SKIP
    >>> list(table.columns)  # doctest: +SKIP
    ['id', 'task', 'score']
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ilt_audit.dataset import load_dataset, open_dataset
from ilt_audit.dataset.card import Card, TaskSpec
from ilt_audit.dataset.derived import check_out, write_split_card
from ilt_audit.dataset.loader import Dataset, make_loader, to_device
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import OptionError, TrainingDiverged
from ilt_audit.training.loop import TrainConfig, load_model, predict, saved_normalisation, train
from ilt_audit.training.losses import INSTANCE_LOSS

FOLDS = 5  # the folds of both baselines unless told otherwise


@dataclasses.dataclass(frozen=True)
class Fold:
    """One network of the ceiling: trained on the clean labels of the other folds."""

    card: Path  # the clean card with this fold's rows marked split "val" (not trained on)
    run_dir: Path
    held_out: np.ndarray  # (R,) sorted rows of the clean manifest the network never saw
    seconds: float  # its training time
    trained: bool  # trained by this call (False: a finished fold found in the folder)


@dataclasses.dataclass(frozen=True)
class _Cleanlab:
    """How cleanlab scores a task type: its module, the given labels, the probabilities."""

    module: str  # the cleanlab module whose get_label_quality_scores it calls
    labels: Callable[[Manifest, TaskSpec], Any]  # the given labels, as cleanlab takes them
    probabilities: Callable[[torch.Tensor], torch.Tensor]  # (R, C) logits -> (R, C)
    stratified: bool  # folds stratified by label (scikit-learn's StratifiedKFold), else KFold


def _tag_lists(manifest: Manifest, spec: TaskSpec) -> list[list[int]]:
    """A multi-label task's tag sets as lists of tag indices."""
    return [np.flatnonzero(row).tolist() for row in manifest.tag_matrix(spec)]


CLEANLAB = {  # the task types cleanlab scores; probabilities as each head's loss reads them
    "classification": _Cleanlab(
        "cleanlab.rank", Manifest.class_index, lambda z: torch.softmax(z, 1), stratified=True
    ),
    "multi-label": _Cleanlab(
        "cleanlab.multilabel_classification", _tag_lists, torch.sigmoid, stratified=False
    ),
}


def cleanlab_scores(
    card: Card | str | Path,
    task: str,
    out: str | Path,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> pd.DataFrame:
    """cleanlab's label quality of a classification or multi-label task, on k-fold
    cross-validated predicted probabilities of the library's network: ``id, task, score``,
    ``score = 1 - quality``.

    The rows are shuffled with ``seed`` and cut in ``folds`` folds (stratified by the given
    label for a classification task); for each, a network trains with ``config`` (default
    options when None) and ``weighting="equal"``, seed ``seed``, on the other folds and predicts
    the fold's probabilities (softmax of a classification head, a sigmoid per tag of a
    multi-label one). ``out`` must be new or empty: it receives each fold's card
    (``cards/fold-K.toml``, :func:`~ilt_audit.dataset.derived.write_split_card`) and run
    (``fold-K``). A fold whose training diverges raises :class:`TrainingDiverged` naming it.

    Example:
        >>> table = cleanlab_scores("noisy/card.toml", "tags", "runs/cleanlab")  # doctest: +SKIP
        >>> table.nlargest(5, "score").id.tolist()  # doctest: +SKIP
    """
    manifest = open_dataset(card).manifest
    spec = manifest.card.task(task)
    if spec.type not in CLEANLAB:
        raise OptionError(
            f"cleanlab scores {' and '.join(CLEANLAB)} labels; task {task!r} is {spec.type}"
        )
    kind = CLEANLAB[spec.type]
    get_label_quality_scores, k_fold = _cleanlab(kind.module, kind.stratified)
    out = Path(out)
    check_out(out)
    labels = kind.labels(manifest, spec)  # (N,) class indices | N lists of tag indices
    n, k = len(manifest.ids), len(manifest.class_names[task])
    pred_probs = np.full((n, k), np.nan)  # (N, C)
    config = _equal(config, seed)
    splits = k_fold(n_splits=folds, shuffle=True, random_state=seed)
    strata = labels if kind.stratified else None
    for fold, (_, held_out) in enumerate(splits.split(np.zeros(n), strata), start=1):
        is_val = np.zeros(n, dtype=bool)
        is_val[held_out] = True
        fold_card = write_split_card(manifest, out / "cards" / f"fold-{fold}.toml", is_val)
        run_dir = out / f"fold-{fold}"
        _train_fold(fold, fold_card, run_dir, config)
        data = load_dataset(fold_card)
        logits = predict(run_dir, data, torch.from_numpy(data.val_index))[task]  # (R, C)
        pred_probs[data.val_index] = kind.probabilities(logits).numpy()
    quality = np.asarray(get_label_quality_scores(labels, pred_probs), dtype=np.float64)
    return _table(manifest.ids, task, 1.0 - quality)


def ceiling_folds(
    card: Card | str | Path,
    out: str | Path,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> list[Fold]:
    """The ceiling's networks of a clean dataset, one per fold, trained (or found) in ``out``.

    The instances are shuffled with ``seed`` and cut in ``folds`` folds; each network trains
    with ``config`` (default options when None) and ``weighting="equal"``, seed ``seed``, on the
    clean card with its fold held out (``cards/fold-K.toml``, run ``fold-K``). A finished fold
    (its ``fold-K.json``) is reused, so one folder serves every corrupted copy of the data; one
    of another card, seed or number of folds is refused (the training options are not
    recorded: give another folder for others). A fold whose training diverges raises
    :class:`TrainingDiverged` naming it; the folds finished before it are kept.
    """
    manifest = open_dataset(card, check_files=False).manifest
    out = Path(out)
    key = {"card": str(manifest.card.path), "seed": seed, "folds": folds}
    n = len(manifest.ids)
    order = np.random.default_rng(seed).permutation(n)
    config = _equal(config, seed)
    found = []
    for fold, rows in enumerate(np.array_split(order, folds), start=1):
        held_out = np.sort(rows)
        done = out / f"fold-{fold}.json"
        run_dir = out / f"fold-{fold}"
        fold_card = out / "cards" / f"fold-{fold}.toml"
        trained = not done.is_file()
        if trained:
            is_val = np.zeros(n, dtype=bool)
            is_val[held_out] = True
            write_split_card(manifest, fold_card, is_val)
            shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted fold left
            seconds = _train_fold(fold, fold_card, run_dir, config)
            done.write_text(json.dumps({"seconds": seconds, **key}), encoding="utf-8")
        record = json.loads(done.read_text(encoding="utf-8"))
        other = {name: record[name] for name in key if name in record and record[name] != key[name]}
        if other:
            raise OptionError(
                f"{out} holds the ceiling's folds of another {', '.join(other)} "
                f"({', '.join(f'{k}={v!r}' for k, v in other.items())}); choose another folder"
            )
        found.append(Fold(fold_card, run_dir, held_out, record["seconds"], trained))
    return found


def ceiling_scores(folds: Sequence[Fold], card: Card | str | Path, task: str) -> pd.DataFrame:
    """Each given label of ``card`` (a corrupted copy of the folds' clean data, the same ids)
    scored by its :func:`disagreement` with the fold network that never saw its instance:
    ``id, task, score``."""
    if not folds:
        raise OptionError("the ceiling needs the networks of ceiling_folds; none were given")
    clean = open_dataset(folds[0].card, check_files=False).manifest
    # the given labels as indices into the classes the networks learned (the clean card's)
    given = dataclasses.replace(
        open_dataset(card, check_files=False).manifest, class_names=clean.class_names
    )
    position = {instance: i for i, instance in enumerate(given.ids)}
    missing = [instance for instance in clean.ids if instance not in position]
    if missing or len(clean.ids) != len(given.ids):
        raise OptionError(
            f"{given.card.path} is not a copy of the folds' data {clean.card.path}: "
            + (f"id {missing[0]!r} is missing" if missing else "its ids differ")
        )
    scores = np.full(len(given.ids), np.nan)  # (N,) by the given manifest's rows
    for fold in folds:
        data = load_dataset(given, norm=saved_normalisation(fold.run_dir), scan=False)
        rows = np.array([position[clean.ids[row]] for row in fold.held_out])
        scores[rows] = disagreement(fold.run_dir, data, task, rows)
    return _table(given.ids, task, scores)


@torch.no_grad()
def disagreement(run_dir: str | Path, data: Dataset, task: str, rows: np.ndarray) -> np.ndarray:
    """How much each given label of ``rows`` disagrees with a finished run's network: (R,).

    The task's training loss (``losses.INSTANCE_LOSS``, in normalised units): classification
    ``-log p`` of the given label (the order of ``1 - p``), regression the squared error summed
    over the columns, segmentation the mean pixel cross-entropy of the given mask (the ignore
    index left out), dense regression the mean squared error of the given map. ``data`` is loaded
    with the run's normalisation (:func:`~ilt_audit.training.loop.saved_normalisation`).
    """
    model = load_model(run_dir, data)
    spec = data.card.task(task)
    parts = []
    for batch in make_loader(data.instances(rows), batch_size=256, workers=0):
        x, targets = to_device(batch, data.card.tasks, torch.device("cpu"))
        output = model(x)[task].float()  # (B, C) | (B, D) | (B, C, H, W) | (B, 1, H, W)
        parts.append(INSTANCE_LOSS[spec.type](output, targets[task], spec))  # (B,)
    return torch.cat(parts).numpy().astype(np.float64)


def _cleanlab(module: str, stratified: bool) -> tuple[Any, Any]:
    """cleanlab's scorer of ``module`` and scikit-learn's k-fold splitter (stratified or not),
    imported when needed."""
    try:
        scorer = importlib.import_module(module).get_label_quality_scores
        from sklearn.model_selection import KFold, StratifiedKFold
    except ImportError as exc:
        raise OptionError(
            f"the cleanlab baseline needs cleanlab and scikit-learn, and {exc.name or 'one'} is "
            'not installed: pip install "ilt-audit[bench]"'
        ) from None
    return scorer, StratifiedKFold if stratified else KFold


def _equal(config: TrainConfig | None, seed: int) -> TrainConfig:
    """The baselines' training options: ``config`` with ``weighting="equal"`` and ``seed``."""
    return dataclasses.replace(config or TrainConfig(), weighting="equal", seed=seed)


def _train_fold(fold: int, card: Path, run_dir: Path, config: TrainConfig) -> float:
    """Train one fold's network; its time in seconds. A divergence names the fold."""
    started = time.perf_counter()
    try:
        train(card, run_dir, config=config)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"fold {fold}: {exc}") from exc
    return time.perf_counter() - started


def _table(ids: Sequence[str], task: str, scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "task": task, "score": scores})
