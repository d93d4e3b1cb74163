"""Credentials out of a storage URI, into the environment, before Ray sees the URI.

``s3://KEY:SECRET@bucket/x`` works with pyarrow (and so with Ray Train and Tune), but Ray
Tune keeps the storage path it was given in its own experiment files (``tuner.pkl``, the
searcher's state, ``search_gen_state-*.json``) on that storage: the secret would be written
next to the results in clear. A study therefore calls :func:`move_uri_credentials` on its
storage URI before anything uses it: the key and secret go to ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` of this process (the AWS SDK under pyarrow reads them; a local Ray
inherits them; :func:`moved_environment` is forwarded to a cluster's workers in Ray's
runtime environment, which lives in Ray's memory, not on the storage), and the URI without
them is used (and shown) everywhere. The storage reached is the same.

Only ``s3://`` (and ``s3a://``) user-info of the form ``key:secret`` is moved (pyarrow
reads no other credential from a URI); whatever else is shown still goes through
:func:`tce_ray.core.redact.redact`.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

__all__ = ["move_uri_credentials", "moved_environment"]

_MOVED: dict[str, str] = {}
_S3_SCHEMES = ("s3://", "s3a://")


def move_uri_credentials(uri: str) -> str:
    """``uri`` without its S3 ``key:secret@`` (set as ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` here); any other URI or path unchanged."""
    scheme = next((s for s in _S3_SCHEMES if uri.lower().startswith(s)), None)
    if scheme is None:
        return uri
    rest = uri[len(scheme):]
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    key, _, secret = userinfo.partition(":")
    env = {"AWS_ACCESS_KEY_ID": unquote(key), "AWS_SECRET_ACCESS_KEY": unquote(secret)}
    os.environ.update(env)
    _MOVED.update(env)
    return f"{scheme}{host}{slash}{path}"


def moved_environment() -> dict[str, str]:
    """The variables :func:`move_uri_credentials` set in this process (for Ray's workers)."""
    return dict(_MOVED)
