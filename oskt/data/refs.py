"""``DatasetRef``: one data set as a job reads it (what it is, where it is), built from the ``data`` section once.

A reference separates identity from location: an embedded synthetic set is fully described by its generator config
and domain (its folder is only where it was generated), a real set by its layout, options and resolved location.
Jobs hold references, never the whole ``data`` section, so adding an unrelated data set changes no job.
"""

from __future__ import annotations

from dataclasses import dataclass

from oskt.config import DataConfig, SynthConfig, run_option
from oskt.errors import DataError

__all__ = ["DatasetRef", "dataset_ref"]


@dataclass(frozen=True)
class DatasetRef:
    """A data set of the config, resolved.

    Attributes:
        name: its name in ``data.datasets`` (a label: logs, folder names).
        path: where it is read from (a label for synthetic sets, whose content is their generator config).
        layout: ``synthetic``, ``market1501``, ``msmt17``, ``cuhk03``, ``folder`` or ``csv``.
        source: what identifies the content: ``generated`` for synthetic sets, else the resolved path.
        synthetic: the generator config (synthetic sets only).
        domain: the synthetic domain (synthetic sets only).
        cuhk03_split: ``detected`` / ``labeled`` (CUHK03-NP only).
        merge_val: add ``list_val.txt`` to train (MSMT17 only).
        val_ids: the validation protocol (``data.val_ids``): training ids held out as query / gallery.
        allow_outside_root: CSV rows / MSMT17 list lines may name files outside the data set's folder
            (``data.allow_outside_root``; CSV and MSMT17 only).
    """

    name: str = run_option("")
    path: str = run_option("")
    layout: str = "synthetic"
    source: str = ""
    synthetic: SynthConfig | None = None
    domain: str | None = None
    cuhk03_split: str | None = None
    merge_val: bool | None = None
    val_ids: int = 0
    allow_outside_root: bool | None = None

    def load(self):  # -> ReIDDataset (imported late: layouts reads images through oskt.io)
        """The parsed data set (validation protocol applied when ``val_ids`` > 0)."""
        from oskt.data.layouts import load_layout
        from oskt.data.ownership import complete_manifest
        from oskt.data.records import holdout_split

        if self.layout == "synthetic" and complete_manifest(self.path) is None:
            raise DataError(
                f"synthetic data set {self.name!r} is not generated at {self.path}: run `oskt data make --dataset "
                f"{self.name}`"
            )
        ds = load_layout(
            self.path,
            self.layout,
            name=self.name,
            cuhk03_split=self.cuhk03_split or "detected",
            merge_val=bool(self.merge_val),
            allow_outside_root=bool(self.allow_outside_root),
        )
        return holdout_split(ds, self.val_ids) if self.val_ids else ds


def dataset_ref(name: str, data: DataConfig) -> DatasetRef:
    """The reference of ``data.datasets[name]``: only the options its layout reads are set."""
    from oskt.data.layouts import dataset_path

    if name not in data.datasets:
        raise DataError(f"unknown data set {name!r}; data.datasets has {sorted(data.datasets)}")
    entry = data.datasets[name]
    path = dataset_path(name, data)
    synthetic = entry.layout == "synthetic"
    return DatasetRef(
        name=name,
        path=path,
        layout=entry.layout,
        source="generated" if synthetic else path,
        synthetic=data.synthetic if synthetic else None,
        domain=entry.domain if synthetic else None,
        cuhk03_split=entry.cuhk03_split if entry.layout == "cuhk03" else None,
        merge_val=entry.merge_val if entry.layout == "msmt17" else None,
        val_ids=data.val_ids,
        allow_outside_root=data.allow_outside_root if entry.layout in ("csv", "msmt17") else None,
    )
