"""The study layer's two errors, in the lowest module of the layer (every other module of
``tce_ray.study`` and the CLI import them from here).

- :class:`ConfigError`: a study file (or dict) is invalid; one line naming the file, the line
  and the key path. The CLI's "bad input" (exit 2). :class:`~tce_ray.study.preflight.PreflightError`
  is one.
- :class:`StudyError`: the study cannot run as asked (results already there, nothing to
  resume, ...).
"""

from __future__ import annotations

__all__ = ["ConfigError", "StudyError"]


class ConfigError(ValueError):
    """A study file (or dict) is invalid. ``path`` is the key path (``train.lr``), ``line``
    the 1-based line in ``file`` when known. ``str(err)`` is the whole message."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None, file: str | None = None):
        self.message = message
        self.path = path
        self.line = line
        self.file = file
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        elif line:
            where = f"line {line}: "
        super().__init__(f"{where}{path + ': ' if path else ''}{message}")


class StudyError(RuntimeError):
    """The study cannot run as asked (results already there, nothing to resume, ...)."""
