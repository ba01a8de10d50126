"""The one door into a dataset: :func:`open_dataset` reads a card and its manifest once.

Training, ``corrupt``, ``fix``, ``init``'s check of the card it drafts, and a run directory's
view of the data it was trained on (the report, the review app) all come in here; nothing else
in the package calls :func:`~ilt_audit.dataset.card.load_card` or
:func:`~ilt_audit.dataset.manifest.load_manifest`. What they need of the data hangs off the
:class:`Source` it returns:

- ``card`` and ``manifest``: the card and its table, every row checked;
- :attr:`Source.stats` and :attr:`Source.files`: one ``stat`` per file the table names, taken
  once, and the record a run keeps of them (``inputs.parquet``);
- :meth:`Source.check_card` and :meth:`Source.check_files`: the checks of a resumed run
  against what it recorded (:mod:`ilt_audit.dataset.record`);
- :meth:`Source.load`: the validated data set that training reads
  (:func:`ilt_audit.dataset.loader.prepare`, the pass over every file).

Example:
    >>> source = open_dataset("sample_manifests/penguins/card.toml")  # doctest: +SKIP
    >>> len(source.manifest.frame), [t.name for t in source.card.tasks]  # doctest: +SKIP
    (333, ['species', 'sex', 'flipper'])
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ilt_audit.dataset import record
from ilt_audit.dataset.card import Card, load_card
from ilt_audit.dataset.manifest import Manifest, load_manifest

if TYPE_CHECKING:  # the loader imports torch: opening a card for its manifest needs none
    from ilt_audit.dataset.files import FileStats
    from ilt_audit.dataset.loader import Dataset


class Source:
    """A dataset as opened by :func:`open_dataset`: its card and its checked manifest."""

    def __init__(self, manifest: Manifest) -> None:
        self.card: Card = manifest.card
        self.manifest = manifest

    @functools.cached_property
    def stats(self) -> FileStats:
        """The size and modification time of every file the manifest names (one ``stat`` each,
        taken the first time they are asked for)."""
        from ilt_audit.dataset.files import file_stats

        return file_stats(self.manifest)

    @functools.cached_property
    def files(self) -> pa.Table:
        """The record of the files a run keeps (:func:`ilt_audit.dataset.record.record_files`)."""
        return record.record_files(self.manifest, self.stats)

    def check_card(self, run_dir: Path, saved_config: dict[str, Any]) -> None:
        """Refuse to resume a run whose card or manifest changed since it started."""
        record.check_card(run_dir, saved_config, self.card)

    def check_files(self, run_dir: Path, *, accept_changed: bool) -> str | None:
        """Compare the files with the run's record; a warning when some changed and
        ``accept_changed`` (:func:`ilt_audit.dataset.record.check_files`)."""
        return record.check_files(run_dir, self.files, accept_changed=accept_changed)

    def load(self, **options: Any) -> Dataset:
        """The validated data set training reads: :func:`ilt_audit.dataset.loader.prepare` of
        the manifest, ``options`` being its (``workers``, ``norm``, ``scan``, ``rescan``,
        ``place``, ``stats``)."""
        from ilt_audit.dataset.loader import prepare

        return prepare(self.manifest, **options)


def open_dataset(
    card: Card | str | Path, *, check_files: bool = True, table: str | None = None
) -> Source:
    """Read a dataset card and its manifest, checking every row (:func:`load_manifest`).

    ``check_files=False`` checks that path cells are text but not that the files exist (the
    training pass decodes every file anyway, in parallel). ``table`` reads another table beside
    the card than the one it names (``init`` checks the card it drafts with the manifest it
    writes under a temporary name).
    """
    card = card if isinstance(card, Card) else load_card(card)
    if table is not None:
        card = dataclasses.replace(card, table=table)
    return Source(load_manifest(card, check_files=check_files))


def load_dataset(card: Card | Manifest | str | Path, **options: Any) -> Dataset:
    """Open a dataset (or take a manifest already read) and prepare it for training in one call:
    ``options`` are :meth:`Source.load`'s."""
    source = Source(card) if isinstance(card, Manifest) else open_dataset(card, check_files=False)
    return source.load(**options)
