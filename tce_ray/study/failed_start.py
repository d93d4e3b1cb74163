"""A study folder left by a start that died before Tune saved any state (issue 24).

``tune.Tuner(...)`` writes ``tuner.pkl`` as it is built, and the Optuna searcher made just
before it writes ``optuna.journal``; a study killed between those writes and the first
saved experiment state leaves a folder that a new run took for finished results ("results
already exist ... --resume") and a resume could not load ("tuner.pkl: the file is empty").

Such a folder holds no trial: no ``trial_*`` folder, no ``experiment_state-*.json``, no
result table, no Train run under ``runs/``. :func:`never_started` says so;
:func:`set_aside` moves its leftovers (``tuner.pkl``, ``optuna.journal*``) into
``failed_start_<UTC time>/`` in the same folder (moved, not deleted) so that the study starts
again as a new one. No Ray is imported here.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tce_ray.results.study_data import JOURNAL_FILE
from tce_ray.results.tables import study_fs

__all__ = ["never_started", "set_aside", "ASIDE_PREFIX"]

ASIDE_PREFIX = "failed_start_"
"""``<storage>/<name>/failed_start_<UTC time>/``: the leftovers of a start that died."""

_TUNE_STATE = re.compile(r"^(experiment_state|searcher-state|search_gen_state)-.+\.(json|pkl)$")
_CACHE = ".class_index_cache"  # the preflight's data-check records under runs/: not a trial's


def _listing(fs: Any, base: str) -> list[Any]:
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))


def _leftovers(names: set[str]) -> list[str]:
    return sorted(n for n in names if n == "tuner.pkl" or n.startswith(JOURNAL_FILE))


def never_started(exp_path: str) -> bool:
    """True when ``exp_path`` holds only what a start that died before the first saved Tune
    state leaves (``tuner.pkl`` and/or the Optuna journal, whole or cut): no trial folder,
    no Tune experiment state, no result table, no Train run."""
    import pyarrow.fs as pafs

    fs, base = study_fs(exp_path)
    infos = _listing(fs, base)
    names = {i.base_name for i in infos}
    if any(n.startswith("trial_") or _TUNE_STATE.match(n) or n.endswith(".parquet") for n in names):
        return False
    if "runs" in names:
        runs = [i for i in _listing(fs, f"{base}/runs") if i.base_name != _CACHE]
        if any(i.type == pafs.FileType.Directory for i in runs):
            return False
    return bool(_leftovers(names))


def set_aside(exp_path: str) -> str | None:
    """Move the leftovers of a start that died (:func:`never_started`) into
    ``failed_start_<UTC time>/``; returns the line that says so, or None when the folder is
    not such a leftover (nothing is touched then)."""
    if not never_started(exp_path):
        return None
    fs, base = study_fs(exp_path)
    names = _leftovers({i.base_name for i in _listing(fs, base)})
    aside = f"{base}/{ASIDE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    fs.create_dir(aside)
    for n in names:
        fs.move(f"{base}/{n}", f"{aside}/{n}")
    return (f"note: {exp_path} holds no Tune state (an earlier start died before its first trial); "
            f"starting it as a new study ({', '.join(names)} moved to {aside})")
