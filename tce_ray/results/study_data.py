"""Load a finished (or interrupted) study back from its folder: :func:`load_study`.

No Ray: it reads the files :func:`tce_ray.study.runner.run_study` wrote in ``<storage>/<name>/``
(``trials``/``history``/``pareto``/``groups`` Parquet, ``study.json``), a local folder or a
URI (``s3://...``). ::

    from tce_ray import load_study
    s = load_study("results/smoke")
    s.trials, s.pareto, s.groups, s.history    # pandas DataFrames
    s.objectives                               # {"worst_iou": "max", "iou_std": "min"}
    s.optuna_study()                           # the Optuna study (journal or optuna_storage)
    s.model("best:worst_iou")                  # a trial's trained network (eval mode)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import pandas as pd
    from torch import nn

__all__ = ["StudyResult", "StudyData", "load_study", "JOURNAL_FILE"]

JOURNAL_FILE = "optuna.journal"
"""The Optuna journal's file name in ``<storage>/<name>/`` (local storage only; written by
:mod:`tce_ray.study.optuna_store`)."""


@dataclass
class StudyResult:
    """What :func:`run_study` returns."""

    name: str
    path: str
    """``<storage>/<name>``: the Tune experiment and the result files."""
    trials: pd.DataFrame
    pareto: pd.DataFrame
    history: pd.DataFrame
    report: str
    files: dict[str, str] = field(default_factory=dict)
    objectives: dict[str, str] = field(default_factory=dict)
    """Metric key -> "max"/"min" (the result files' spelling)."""
    groups: pd.DataFrame | None = None
    """One row per group of trials sharing loss settings (the seeds of a configuration):
    mean and std of every objective and criterion (``results.group_table``)."""

    def failed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "failed"]


@dataclass
class StudyData(StudyResult):
    """What :func:`load_study` returns: :class:`~tce_ray.study.runner.StudyResult`'s tables and
    paths plus the study's metadata (``study.json``: objectives, class names, sampler,
    seeds, the study file as ``meta["config"]``)."""

    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """The classes of the per-class columns (``iou/<class>``), in the data set's order."""
        return list(self.meta.get("class_names") or [c[4:] for c in self.trials.columns if c.startswith("iou/")])

    def completed(self) -> Any:
        """The completed trials (a DataFrame)."""
        return self.trials[self.trials["status"] == "completed"]

    def confusion(self, trial_id: str) -> pd.DataFrame:
        """The confusion matrix of ``trial_id``'s last checkpoint (rows: true class, columns:
        predicted class, pixel counts); FileNotFoundError when it has none."""
        from tce_ray.train.confusion_io import load_confusion

        rows = self.trials[self.trials["trial_id"] == trial_id]
        if not len(rows):
            raise KeyError(f"no trial {trial_id!r} in this study; its trials: {self.trials['trial_id'].tolist()}")
        ckpt = str(rows.iloc[0].get("checkpoint") or "")
        if not ckpt:
            raise FileNotFoundError(f"trial {trial_id} has no checkpoint (it never reported one)")
        return load_confusion(ckpt)

    def model(self, which: str = "best", device: str = "cpu") -> nn.Module:
        """The trained network of a trial: ``which`` is a trial id, ``"best:<objective>"`` (the
        completed trial best by that registered objective, in the study's direction; see
        :mod:`tce_ray.results.trial_model`) or ``"best"`` (the first objective). Rebuilt from the
        trial's checkpoint, its weights loaded, in eval mode on ``device``. KeyError for an
        unknown trial or objective, FileNotFoundError for a trial without a checkpoint."""
        from tce_ray.results.trial_model import load_trial_model

        return load_trial_model(self, which, device).network

    def optuna_study(self) -> optuna.Study:
        """The study's Optuna study: its journal (``<dir>/optuna.journal``) or the
        ``optuna_storage`` database the study file names. FileNotFoundError where it was kept
        in memory (a study on remote storage)."""
        import optuna

        url = (self.meta.get("config") or {}).get("optuna_storage")
        if url:
            return optuna.load_study(study_name=self.name, storage=url)
        path = os.path.join(self.path, JOURNAL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: this study kept its Optuna study in memory "
                                    "(remote storage); set optuna_storage: to an RDB URL to keep it")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return optuna.load_study(study_name=self.name, storage=JournalStorage(JournalFileBackend(path)))


def load_study(study_dir: str | os.PathLike[str]) -> StudyData:
    """The tables, paths and metadata of the study in ``study_dir`` (``<storage>/<name>``).
    Raises FileNotFoundError naming what is missing when it holds no study results."""
    import pandas as pd

    from tce_ray.results.tables import group_table, read_tables, study_fs

    tables = read_tables(study_dir)
    fs, base = study_fs(study_dir)
    path = str(study_dir) if "://" in str(study_dir) else os.path.abspath(os.fspath(study_dir))
    names = ("trials", "history", "pareto", "groups", "report", "meta")
    files = {n: f"{path.rstrip('/')}/{n}.parquet" for n in names[:4]}
    files["report"], files["meta"] = f"{path.rstrip('/')}/report.md", f"{path.rstrip('/')}/study.json"
    files = {n: p for n, p in files.items() if fs.get_file_info(f"{base}/{os.path.basename(p)}").type.name != "NotFound"}
    objectives = tables.objectives
    if "groups" in files:
        import pyarrow.parquet as pq

        groups = pq.read_table(f"{base}/groups.parquet", filesystem=fs).to_pandas()
    else:
        groups = group_table(tables.trials, objectives) if len(tables.trials) else pd.DataFrame()
    name = str(tables.meta.get("name") or os.path.basename(path.rstrip("/")))
    return StudyData(name, path, tables.trials, tables.pareto, tables.history, files.get("report", ""),
                     files, objectives, groups, meta=tables.meta)
