"""What a study keeps so that ``--resume`` after a hard kill loses nothing and re-runs nothing.

Tune writes its files (experiment state, searcher state, each trial's ``result.json``)
into a staging folder and copies them to the storage every few seconds, so a driver killed
with SIGKILL leaves a storage that is some seconds behind, and on a restore Tune starts a
restored trial's ``result.json`` afresh (the reports before the kill vanish from it). This
module closes those gaps, on the storage itself (a local folder or a URI):

- **the final record** (``runs/<trial_id>/tce_final.json``, :func:`write_final`): written
  atomically by a trial as it ends successfully, with its final metrics. A trial that Tune
  restarts on resume (it finished after the last snapshot) reads it and reports those
  metrics again instead of training (:func:`read_final`); the result tables take a
  completed trial's final metrics from it.
- **the kept history** (``trial_<id>/tce_history.jsonl``, :func:`keep_histories`): before
  each restore, the reports in every trial's ``result.json`` are merged into it (one row
  per step, later reports win), so the history tables hold the reports of every attempt.
- **the state check** (:func:`check_experiment`): before Tune restores, the newest
  experiment state, searcher state and ``tuner.pkl`` are read; a file cut by a kill while
  it was copied makes the restore fall back to the previous session's state (when there is
  one) or stop with one line naming the file; a state pickled by an older tce-ray (whose
  search-space classes changed) stops with one line saying it cannot be resumed.

No Ray is imported here (the pickles are read with :mod:`pickle`; unpickling Tune's
objects imports Ray as they need).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from typing import Any

import pandas as pd

from tce_ray.results.tables import DamagedResultsError, read_json_lines, study_fs
from tce_ray.train.run_state import RunState, storage_join

__all__ = [
    "FINAL_NAME", "HISTORY_NAME", "IncompatibleStateError", "write_final", "read_final", "keep_histories",
    "kept_history", "merge_history", "trial_result_rows", "check_experiment",
]

FINAL_NAME = "tce_final.json"
"""A finished trial's final metrics, in its Train run folder ``runs/<trial_id>/``."""
HISTORY_NAME = "tce_history.jsonl"
"""A trial's reports over all its attempts, in its Tune folder ``trial_<id>/``."""

_SESSION = re.compile(r"^(experiment_state|searcher-state|search_gen_state)-(.+)\.(json|pkl)$")


class IncompatibleStateError(RuntimeError):
    """The experiment was saved by a version of tce-ray whose pickled classes no longer load."""


# --------------------------------------------------------------------------- final record


def write_final(runs_storage: str, trial_id: str, metrics: dict[str, Any]) -> str:
    """Record a finished trial's final ``metrics`` (atomically); returns the file's URI."""
    clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return RunState(storage_join(runs_storage, trial_id)).write_text(FINAL_NAME, json.dumps(clean, allow_nan=True))


def read_final(runs_storage: str, trial_id: str) -> dict[str, Any] | None:
    """The final metrics :func:`write_final` recorded for the trial, or None (not finished,
    or the record is unreadable: then the trial runs again from its last checkpoint)."""
    try:
        text = RunState(storage_join(runs_storage, trial_id)).read_text(FINAL_NAME)
    except OSError:
        return None
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj else None


# --------------------------------------------------------------------------- history


def merge_history(*frames: pd.DataFrame | None) -> pd.DataFrame | None:
    """The reports of several attempts of one trial: one row per ``step`` (the later frame
    wins), sorted by step; rows without a step are kept as they are."""
    parts = [f for f in frames if f is not None and len(f)]
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    if "step" not in df:
        return df
    with_step = df[df["step"].notna()].drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return pd.concat([with_step, df[df["step"].isna()]], ignore_index=True)


def _trial_dirs(fs: Any, base: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("trial_"))


def _read_text(fs: Any, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def keep_histories(exp_path: str) -> int:
    """Merge every trial's ``result.json`` into its ``tce_history.jsonl`` (before a restore);
    returns how many trials have a kept history. Partial lines are skipped with a warning
    (and dropped from ``result.json``, which Tune reads on the restore)."""
    fs, base = study_fs(exp_path)
    n = 0
    for d in _trial_dirs(fs, base):
        kept = _rows(fs, f"{d}/{HISTORY_NAME}")
        new = _rows(fs, f"{d}/result.json")
        text = _read_text(fs, f"{d}/result.json") or ""
        if len(new) < sum(1 for ln in text.splitlines() if ln.strip()):  # a line cut by a kill: Tune reads it too
            RunState(d, filesystem=fs).write_text("result.json", "".join(json.dumps(r, default=str) + "\n" for r in new))
        merged = merge_history(pd.DataFrame(kept) if kept else None, pd.DataFrame(new) if new else None)
        if merged is None:
            continue
        text = "".join(json.dumps(r, default=str, allow_nan=True) + "\n" for r in _records(merged))
        RunState(d, filesystem=fs).write_text(HISTORY_NAME, text)
        n += 1
    return n


def _rows(fs: Any, path: str) -> list[dict[str, Any]]:
    text = _read_text(fs, path)
    return read_json_lines(text, path) if text else []


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in df.to_dict("records"):
        out.append({k: v for k, v in r.items() if not (isinstance(v, float) and v != v and k not in ("step",))})
    return out


def kept_history(trial_path: str) -> pd.DataFrame | None:
    """The kept reports of the trial whose Tune folder is ``trial_path`` (None without)."""
    if not trial_path:
        return None
    fs, base = study_fs(trial_path)
    rows = _rows(fs, f"{base}/{HISTORY_NAME}")
    return pd.DataFrame(rows) if rows else None


def trial_result_rows(trial_path: str) -> pd.DataFrame | None:
    """The reports in a trial's ``result.json`` (partial lines skipped with a warning)."""
    if not trial_path:
        return None
    fs, base = study_fs(trial_path)
    rows = _rows(fs, f"{base}/result.json")
    return pd.DataFrame(rows) if rows else None


# --------------------------------------------------------------------------- state check


def _sessions(fs: Any, base: str) -> dict[str, dict[str, str]]:
    """session string -> {kind: path} of Tune's experiment / searcher state files."""
    import pyarrow.fs as pafs

    out: dict[str, dict[str, str]] = {}
    for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        m = _SESSION.match(i.base_name)
        if m and i.type == pafs.FileType.File:
            out.setdefault(m.group(2), {})[m.group(1)] = i.path
    return out


def _load(fs: Any, path: str) -> None:
    """Read one state file; DamagedResultsError when cut or empty, IncompatibleStateError
    when it was pickled by code whose classes changed."""
    with fs.open_input_stream(path) as f:
        data = f.read()
    if not data:
        raise DamagedResultsError(path, "the file is empty (the study was killed while it was written)")
    if not data.startswith(b"\x80"):  # JSON (experiment_state); Tune pickles search_gen_state-*.json
        try:
            json.loads(data.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedResultsError(path, f"cut or not JSON ({exc})") from None
        return
    _unpickle(data, path)


def _unpickle(data: bytes, path: str) -> Any:
    try:
        return pickle.loads(data)
    except (AttributeError, ImportError, TypeError) as exc:  # a class or module that moved or changed
        raise IncompatibleStateError(
            f"{path} was saved by another version of tce-ray and does not load with this one "
            f"({type(exc).__name__}: {exc}): the search space's pickled classes changed, so this study cannot be "
            "resumed; run it again as a new study (another name or --storage)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, ...: a cut file
        raise DamagedResultsError(path, f"cut or not a pickle ({type(exc).__name__}: {exc})") from None


def check_experiment(exp_path: str) -> list[str]:
    """Check Tune's saved state at ``exp_path`` before a restore; returns warnings.

    The newest session whose experiment state, searcher state and search-generator state
    all read whole is the one Tune will restore: the files of newer sessions that do not
    read (cut by a kill while they were copied) are renamed ``*.damaged`` so Tune skips
    them. Raises :class:`DamagedResultsError` when no session is whole (or ``tuner.pkl`` is
    cut) and :class:`IncompatibleStateError` when the state was pickled by an older tce-ray.
    """
    fs, base = study_fs(exp_path)
    tuner = f"{base}/tuner.pkl"
    raw = None
    try:
        with fs.open_input_stream(tuner) as f:
            raw = f.read()
    except FileNotFoundError:
        pass
    if raw is not None:
        if not raw:
            raise DamagedResultsError(tuner, "the file is empty", "the study cannot be resumed; run it again as a new study")
        _unpickle(raw, tuner)
    sessions = _sessions(fs, base)
    warned: list[str] = []
    for session in sorted(sessions, reverse=True):  # the session string is a timestamp
        files = sessions[session]
        try:
            for kind in ("experiment_state", "search_gen_state", "searcher-state"):
                if kind in files:
                    _load(fs, files[kind])
            if "experiment_state" not in files:
                raise DamagedResultsError(f"{base}/experiment_state-{session}.json", "missing")
        except DamagedResultsError as exc:
            for p in files.values():
                fs.move(p, p + ".damaged")
            warned.append(f"{exc}; the state saved before it is used (the trials since then run again)")
            continue
        for w in warned:
            warnings.warn(w, stacklevel=2)
        return warned
    if warned:
        raise DamagedResultsError(
            exp_path, "its saved Tune state is damaged (" + warned[0].split(";")[0] + ") and no earlier state is whole",
            "the study cannot be resumed; run it again as a new study (another name or --storage)",
        )
    return warned
