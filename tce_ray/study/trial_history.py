"""The driver's copy of every trial report, on the storage as it arrives (a Tune callback) [Ray].

Tune writes each trial's ``result.json`` into a staging folder and copies it to the storage
every few seconds, and starts it afresh when a trial is restored; a driver killed hard
therefore loses the reports since the last copy, and a resumed trial the reports before
the kill. :class:`HistoryKeeper` writes every report at once into the trial's folder on
the storage (``trial_<id>/tce_history.jsonl``, replaced atomically), and the study's
result tables read it (:func:`tce_ray.study.resume.kept_history`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tce_ray.study.resume import HISTORY_NAME

__all__ = ["HistoryKeeper"]

_SKIP = {"config"}  # the trial config is in params.json and the trials table


class HistoryKeeper(Callback):
    """On each trial result: append it to ``tce_history.jsonl`` in the trial's folder (on a
    local disk an append; on an object store the file is written again whole)."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: the cache stays here
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lines = {}

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        from tce_ray.train.run_state import RunState

        try:
            state = RunState(trial.storage.trial_fs_path, filesystem=trial.storage.storage_filesystem)
            row = {k: v for k, v in result.items() if k not in _SKIP}
            line = json.dumps(row, default=str, allow_nan=True) + "\n"
            if state.is_local:  # append and flush: a kill cuts at most this line (skipped when read)
                path = Path(state.path(HISTORY_NAME))
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a+b") as f:
                    end = f.tell()
                    if end:  # a line cut by a kill stays a line of its own (skipped when read)
                        f.seek(end - 1)
                        if f.read(1) != b"\n":
                            line = "\n" + line
                    f.write(line.encode())
                return
            lines = self._lines.get(trial.trial_id)
            if lines is None:  # first report seen by this driver: keep what an earlier one wrote
                old = state.read_text(HISTORY_NAME) or ""
                lines = self._lines[trial.trial_id] = [ln + "\n" for ln in old.splitlines() if ln.strip()]
            lines.append(line)  # object stores cannot append: the whole file again, in one write
            state.write_text(HISTORY_NAME, "".join(lines))
        except Exception as exc:  # noqa: BLE001 - a lost history line must not stop the study
            print(f"warning: could not keep the report of trial {trial.trial_id}: {exc}", file=sys.stderr)
