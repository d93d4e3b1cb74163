"""Tiny helpers shared by the benchmarks: a plain-text table and a JSON result file."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}"
    return "-" if v is None else str(v)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Print rows (dicts; columns = union of keys in first-seen order) as an aligned table."""
    if not rows:
        print("(no rows)")
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w) for v, w in zip(row, widths)))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    return str(v)


def write_results(name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write {"name", "meta", "rows"} to benchmarks/out/<name>.json (meta gains python/platform/time)."""
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"name": name, "meta": meta, "rows": rows}, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")
    return path


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def init_ray(attempts: int = 4, **kwargs: Any) -> None:
    """``ray.init(address="local", **kwargs)``, tried again when the local node times out
    while starting (Ray waits 30 s for its raylet: on an overloaded shared machine it can
    take longer)."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"ray.init: the local node timed out while starting (attempt {attempt}/{attempts}); trying again",
                  file=sys.stderr, flush=True)
            ray.shutdown()
            time.sleep(10)
