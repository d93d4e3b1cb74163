"""Credentials out of text: the one function that every printed or written URI goes through.

A storage or database URI may carry secrets: ``s3://KEY:SECRET@bucket/x``,
``postgresql://user:password@host/db``, ``s3://bucket/x?access_key=K&secret_key=S`` or a
signed URL's ``X-Amz-Signature=...``. :func:`redact` replaces the user-info of every URI in
a text with ``***:***@`` and the value of every query parameter whose name says it is a
credential (see :data:`SECRET_PARAM`) with ``***``; the rest of the text is unchanged. The
real URI is still what the storage layers use; only what is shown or written for people
(console lines, logs, ``study.json``, reports, error messages) is redacted.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact", "redact_obj", "REDACTED"]

REDACTED = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s@?#'\"]*)@")
SECRET_PARAM = re.compile(
    r"(?P<name>(?<=[?&;])(?:[A-Za-z0-9_.\-]*(?:key|secret|token|password|passwd|pwd|signature|credential|sig)"
    r"[A-Za-z0-9_.\-]*|x-amz-[A-Za-z0-9_\-]+)=)(?P<value>[^&;\s#'\"]*)",
    re.IGNORECASE,
)
"""A query parameter holding a credential: a name containing key, secret, token, password,
passwd, pwd, signature, credential or sig, or any ``X-Amz-*`` parameter."""


def _userinfo(m: re.Match[str]) -> str:
    user = m.group("user")
    masked = f"{REDACTED}:{REDACTED}" if ":" in user else REDACTED
    return f"{m.group('scheme')}{masked}@"


def redact(text: Any) -> str:
    """``text`` (made a string) with the credentials of every URI in it replaced by ``***``."""
    s = str(text)
    if "@" in s:
        s = _USERINFO.sub(_userinfo, s)
    if "=" in s:
        s = SECRET_PARAM.sub(lambda m: m.group("name") + REDACTED, s)
    return s


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string :func:`redact`-ed."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


class RedactingStream:
    """A text stream that :func:`redact`-s what is written to it, line by line, before it
    reaches ``stream`` (``sys.stdout`` / ``sys.stderr`` of the CLI: every console line,
    Ray's and the loggers' included). A partial line is held until its newline or a flush."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        data = self._pending + str(text)
        head, sep, self._pending = data.rpartition("\n")
        if sep:
            self._stream.write(redact(head + sep))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(redact(self._pending))
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self._stream, name)
