"""Check everything a trial needs before Ray starts: fail in seconds, not in every trial.

``python -m tce_ray.study`` runs :func:`preflight` after the study file is validated and
before Ray is imported. It builds what every trial would build first, once, in the driver:

- **names and folders**: the study name fits a folder name (at most
  :data:`MAX_NAME_CHARS` characters); a local ``storage`` (and ``<storage>/<name>``) is a
  folder or can be created (no file in the way, writable); an ``optuna_storage`` SQLite
  file's folder exists (other database URLs: the driver is installed);
- **resources** (a local Ray only: no ``--address`` / ``RAY_ADDRESS`` and Ray not already
  initialised): one trial's ``train.num_workers x train.cpus_per_worker`` CPUs fit this
  machine, ``train.use_gpu`` has GPUs to use; ``resources.max_concurrent_trials`` trials
  at once that do not fit give a warning (Tune then runs fewer at once);
- **the data** of the base run and of every explicit configuration: both splits are built
  with the run's options (file pairing, sizes, readable headers), each has images (the
  training split at least ``batch_size x num_workers``), one sample of each split goes
  through the transforms, its label map's values are classes or ignore (255), both splits
  have the same classes; with ``data.verify: true`` (the default) every file of both
  splits is decoded and every label map checked (:func:`tce_ray.data.verify.verify_dataset`),
  once per data-set fingerprint: the result is cached in the class-index cache folder
  (:func:`verify_cache_dir`), so a re-run costs a fraction of a millisecond per split;
- **the model**: built once per distinct ``model`` section with the data set's classes
  (backbone name, output stride, ``backbone_weights`` loaded with ``weights_only=True`` and
  matched to the backbone: a local file, or a torchvision weights name such as ``imagenet``
  from the torch hub cache, downloaded into it when online; offline, the error names the
  cache file to place), then one forward pass on a small image.

Each problem raises :class:`PreflightError` (a :class:`~tce_ray.study.config.ConfigError`: one
line with the file, the YAML line and the key path, what is wrong and how to fix it); the
CLI exits with code 2. This module imports neither Ray nor (until the data and model
checks) torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tce_ray.study.config import ConfigError, StudyConfig, _line_map, _lookup
from tce_ray.train.run_state import RunState, is_uri, storage_join
from tce_ray.train.runspec import DataSpec, ModelSpec, RunSpec

__all__ = ["MAX_NAME_CHARS", "PreflightError", "PreflightReport", "preflight", "verify_cache_dir", "cached_verify"]

MAX_NAME_CHARS = 128
"""Longest study name: it names a folder (file systems allow 255 bytes) and the Optuna study."""
CACHE_FOLDER = ".class_index_cache"
"""The class-index cache folder's name (as ``tce_ray.train.trainer.CACHE_FOLDER``)."""
IGNORE_INDEX = 255
_PROBE_SIZE = 64
"""Side of the image of the model's trial forward pass."""


class PreflightError(ConfigError):
    """Something a trial needs cannot work; ``str(err)`` is one line: where, what, how to fix."""


@dataclass
class PreflightReport:
    """What :func:`preflight` checked: one line per check, warnings, and how long it took."""

    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return f"preflight ({self.seconds:.1f} s): " + "; ".join(self.checked)


def verify_cache_dir(runs_storage: str) -> str:
    """The class-index cache of the runs under ``runs_storage`` (``<storage>/<name>/runs``):
    ``$TCE_CACHE_DIR`` if set, else ``<runs_storage>/.class_index_cache``, the folder
    :func:`tce_ray.train.trainer.class_index_cache_dir` names. Data-check records go there too."""
    return os.environ.get("TCE_CACHE_DIR") or storage_join(runs_storage, CACHE_FOLDER)


class _Where:
    """Turns a key path into a :class:`PreflightError` with the study file's line."""

    def __init__(self, file: str | None, flat: bool):
        self.file = file
        self.flat = flat  # the run's sections at the top level (else under run:)
        self.lines: dict[tuple[Any, ...], int] = {}
        if file:
            try:
                self.lines = _line_map(Path(file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                self.lines = {}

    def error(self, path: str, message: str) -> PreflightError:
        parts = tuple(int(p) if p.isdigit() else p for p in path.split(".") if p)
        run_keys = set(RunSpec.model_fields)
        if parts and parts[0] in run_keys and not self.flat:
            parts = ("run", *parts)
        line = _lookup(self.lines, parts) if self.lines else None
        return PreflightError(message, path=".".join(str(p) for p in parts), line=line, file=self.file)


def _one_line(text: object, limit: int = 400) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# --------------------------------------------------------------------------- names and folders


def _check_name(cfg: StudyConfig, where: _Where) -> None:
    if len(cfg.name) > MAX_NAME_CHARS:
        raise where.error("name", f"the study name has {len(cfg.name)} characters; it names the results folder "
                                  f"and the Optuna study: use at most {MAX_NAME_CHARS}")


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    return None if is_uri(location) else Path(location).expanduser()


def _check_folder(path: Path, key: str, where: _Where) -> str:
    """``path`` is a folder or can be made one: no file in the way, the nearest existing folder writable."""
    p = path.absolute()
    for anc in [p, *p.parents]:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                what = "is a file" if anc == p else f"cannot be created: {anc} is a file"
                raise where.error(key, f"{p} {what}; {key} must name a folder: choose another path "
                                       "or move that file away")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise where.error(key, f"cannot write in {anc} (permission denied); choose a folder you can write "
                                       "(--storage DIR)")
            break
    return f"{key} {p}"


def _check_storage(cfg: StudyConfig, where: _Where) -> str | None:
    local = _local_path(cfg.storage)
    if local is None:
        return None  # remote storage: reached through pyarrow when the study starts (the lock)
    _check_folder(local, "storage", where)
    return _check_folder(local / cfg.name, "storage", where)


def _check_optuna_storage(cfg: StudyConfig, where: _Where) -> str | None:
    url = cfg.optuna_storage
    if not url:
        return None
    if url.startswith("sqlite://"):
        file = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not file or file == ":memory:":
            return "optuna_storage (in memory)"
        path = Path(file.split("?", 1)[0]).expanduser()
        if path.is_dir():
            raise where.error("optuna_storage", f"{path.absolute()} is a folder; name a database file in it, "
                                                f"e.g. sqlite:///{path / 'optuna.db'}")
        parent = path.absolute().parent
        if not parent.is_dir():
            raise where.error("optuna_storage", f"the folder {parent} of the SQLite file does not exist; create it "
                                                f"(mkdir -p {parent}) or fix the path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise where.error("optuna_storage", f"cannot write in {parent} (permission denied); put the database "
                                                "in a folder you can write")
        return f"optuna_storage {path.absolute()}"
    try:  # another database: its driver must be installed (no connection is made here)
        import sqlalchemy

        sqlalchemy.create_engine(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, NoSuchModuleError, ImportError
        raise where.error("optuna_storage", f"cannot use the database URL: {_one_line(exc, 200)}; install its "
                                            "driver (e.g. psycopg2 for postgresql://) or fix the URL") from None
    return "optuna_storage driver"


# --------------------------------------------------------------------------- resources


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no usable CUDA build
        return 0


def _machine_cpus() -> int:
    """The CPUs this process may use (its affinity mask, as a local Ray counts them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _check_resources(cfg: StudyConfig, address: str | None, where: _Where, report: PreflightReport,
                     cpu_count: int | None = None, gpu_count: Callable[[], int] = _gpu_count) -> None:
    if address or os.environ.get("RAY_ADDRESS") or _ray_running():
        return  # a cluster (or a Ray set up by the caller): ray_env.cluster_problem checks it once joined
    tr = cfg.run.train
    cpus = cpu_count if cpu_count is not None else _machine_cpus()
    need = tr.num_workers * tr.cpus_per_worker
    if need > cpus + 1e-9:
        raise where.error("train.cpus_per_worker", (
            f"one trial needs train.num_workers x train.cpus_per_worker = {tr.num_workers} x "
            f"{tr.cpus_per_worker:g} = {need:g} CPUs but this machine has {cpus}; lower them "
            "(or run on a cluster with --address)"))
    gpus_each = getattr(tr, "gpus_per_worker", None) or 1  # train.gpus_per_worker where the schema has it
    if tr.use_gpu:
        have = gpu_count()
        if have < gpus_each * tr.num_workers:
            raise where.error("train.use_gpu", (
                f"train.use_gpu asks for {gpus_each * tr.num_workers:g} GPU(s) ({tr.num_workers} workers) but this "
                f"machine has {have}; set train.use_gpu: false (or run on a cluster with GPUs, --address)"))
    mc = cfg.resources.max_concurrent_trials
    if mc and mc * need > cpus + 1e-9:
        report.warnings.append(
            f"resources.max_concurrent_trials: {mc} trials x {need:g} CPUs = {mc * need:g} CPUs but this machine "
            f"has {cpus}: at most {max(1, int(cpus // need))} will run at once")
    report.checked.append(f"resources ({need:g} of {cpus} CPUs per trial)")


# --------------------------------------------------------------------------- data


def _run_of_configurations(cfg: StudyConfig) -> list[tuple[str, RunSpec]]:
    """(key path prefix, run) of the base run and of every explicit configuration."""
    runs = [("", cfg.run)]
    for i, c in enumerate(cfg.search.configurations):
        runs.append((f"search.configurations.{i}", cfg.run.merged(c.overrides())))
    return runs


def build_splits(data: DataSpec) -> tuple[Any, Any]:
    """The training and validation sets of a run's ``data`` section, as the workers build
    them (:func:`tce_ray.data.build_splits`)."""
    from tce_ray.data import build_splits as build

    return build(data)


def _data_key(exc: BaseException, data: DataSpec) -> str:
    """The key of ``data`` a build error is about: an option, the crop, the scale range,
    else the root (a file data set's files) or the section."""
    import re

    from tce_ray.data import _accepted_options

    text = str(exc)
    if isinstance(exc, TypeError) and "option" in text:
        return "data.options"
    for key in ("crop_size", "scale_range"):
        if re.search(rf"\b{key}\b\s*(must|=)", text):
            return f"data.{key}"
    try:
        options = [o for o in _accepted_options(data.name) if o not in ("crop_size", "scale_range", "augment")]
    except Exception:  # a plugin's builder without a signature to read
        options = list(data.options)
    if any(re.search(rf"\b{re.escape(o)}\b\s*(must|=)", text) for o in options):  # "num_images must be ..."
        return "data.options"
    return "data.root" if data.root else "data"


def _check_labels(ds: Any, i: int) -> str | None:
    import numpy as np

    try:
        mask = np.asarray(ds.load_mask(i))
    except Exception as exc:
        return _one_line(exc)
    k = int(ds.num_classes)
    bad = ((mask >= k) & (mask != IGNORE_INDEX)) | (mask < 0)
    if bad.any():
        values = np.unique(mask[bad])[:10].tolist()
        return (f"label map of image {i} holds value(s) {values} outside the classes [0, {k}) and not ignore "
                f"({IGNORE_INDEX}); fix the file or remap the values (data.options.remap for a folder data set)")
    return None


def _check_data(run: RunSpec, prefix: str, where: _Where, cache_dir: str | None,
                progress: Callable[[str], None] | None) -> tuple[Any, str]:
    """Build and sample both splits of ``run.data``; returns (training set, a summary)."""
    d, tr = run.data, run.train
    key = (lambda k: f"{prefix}.{k}" if prefix else k)
    files = "data.root" if d.root else "data"  # the key a bad file is about
    if d.root and is_uri(d.root):
        return None, f"data {d.name} (remote root, checked by the workers)"
    try:
        train, val = build_splits(d)
    except Exception as exc:  # the builders raise ValueError / TypeError / FileNotFoundError / OSError
        raise where.error(key(_data_key(exc, d)), f"cannot build the {d.name} data set: {_one_line(exc)}") from None
    if tuple(train.class_names) != tuple(val.class_names):
        raise where.error(key("data.val_split"), (
            f"the train split {d.train_split!r} has classes {list(train.class_names)} but the val split "
            f"{d.val_split!r} has {list(val.class_names)}; both must use the same class list"))
    need = tr.batch_size * tr.num_workers
    if len(train) < need:
        raise where.error(key("train.batch_size"), (
            f"the training split {d.name}/{d.train_split} has {len(train)} images, fewer than train.batch_size x "
            f"train.num_workers = {need}; lower them or use more images"))
    if len(val) < 1:
        raise where.error(key("data.val_split"), f"the validation split {d.name}/{d.val_split} has no images")
    for ds, split in ((train, d.train_split), (val, d.val_split)):
        try:
            image, mask = ds[0]
        except Exception as exc:
            raise where.error(key(_data_key(exc, d)), (
                f"reading image 0 of {d.name}/{split} failed: {_one_line(exc)}")) from None
        if image.ndim != 3 or image.shape[0] != 3 or tuple(mask.shape) != tuple(image.shape[1:]):
            raise where.error(key(files), (
                f"{d.name}/{split} gives an image of shape {tuple(image.shape)} and a mask of shape "
                f"{tuple(mask.shape)}; expected [3, H, W] and [H, W]"))
        problem = _check_labels(ds, 0)
        if problem:
            raise where.error(key(files), f"{d.name}/{split}: {problem}")
    if d.verify:
        from tce_ray.data.verify import DataCheckError

        for ds in (train, val):
            try:
                cached_verify(ds, cache_dir, progress=progress)
            except DataCheckError as exc:
                raise where.error(key(files), _one_line(exc, 600)) from None
    verified = "verified" if d.verify else "not verified (data.verify: false)"
    return train, f"data {d.name} (train {len(train)}, val {len(val)} images, {verified})"


def cached_verify(dataset: Any, cache: str | None, *, progress: Callable[[str], None] | None = None) -> Any:
    """:func:`tce_ray.data.verify.verify_dataset` with its record in ``cache`` (a local
    folder or a URI on the study's storage, as the class index: a remote record is fetched
    into a scratch folder and a new one uploaded). ``cache=None``: check, record nothing."""
    from tce_ray.data.verify import verified_path, verify_dataset

    kw: dict[str, Any] = {"progress": progress} if progress is not None else {}
    if cache is None:
        return verify_dataset(dataset, **kw)
    state = RunState(cache)
    if state.is_local:
        return verify_dataset(dataset, cache_dir=state.root, **kw)
    key = verified_path(".", str(dataset.fingerprint())).name
    cached = state.read_bytes(key)
    with tempfile.TemporaryDirectory(prefix="tce-verify-") as scratch:
        local = Path(scratch) / key
        if cached is not None:
            local.write_bytes(cached)
        result = verify_dataset(dataset, cache_dir=scratch, **kw)
        fresh = local.read_bytes() if local.exists() else None
    if fresh is not None and fresh != cached:
        state.write_bytes(key, fresh)
    return result


# --------------------------------------------------------------------------- model


def _check_model(model: ModelSpec, num_classes: int, prefix: str, where: _Where) -> str:
    import torch

    from tce_ray.models import deeplabv3plus

    from tce_ray.models.backbones import list_backbones

    key = (lambda k: f"{prefix}.{k}" if prefix else k)
    if model.backbone not in list_backbones():
        hint = " (ResNet-18/34 use BasicBlocks, which cannot be dilated)" if model.backbone in ("resnet18", "resnet34") else ""
        raise where.error(key("model.backbone"), f"unknown backbone {model.backbone!r}{hint}; choose one of {list_backbones()}")
    try:
        net = deeplabv3plus(num_classes, model.backbone, model.output_stride, model.backbone_weights)
    except Exception as exc:
        text = _one_line(exc, 800)  # a weights error names a file and a URL
        if not model.backbone_weights:
            raise where.error(key("model"), f"cannot build the model: {text}") from None
        if not isinstance(exc, (FileNotFoundError, ValueError)):  # torch.load of a file that is no state dict
            text = (f"cannot load the backbone_weights file {model.backbone_weights!r}: torch.load(weights_only=True) "
                    f"cannot read it ({type(exc).__name__}: not a file torch.save wrote, or one holding more than tensors); "
                    "give a torchvision state-dict file (torch.save(model.state_dict(), path))")
        raise where.error(key("model.backbone_weights"), text) from None
    try:
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    except Exception as exc:
        raise where.error(key("model"), f"a forward pass of the model failed: {_one_line(exc)}") from None
    if tuple(out.shape) != (1, num_classes, _PROBE_SIZE, _PROBE_SIZE):
        raise where.error(key("model"), f"the model gives logits of shape {tuple(out.shape)} for a 1x3x{_PROBE_SIZE}"
                                        f"x{_PROBE_SIZE} input; expected (1, {num_classes}, {_PROBE_SIZE}, {_PROBE_SIZE})")
    return f"model {model.backbone} (os {model.output_stride}{_weights_line(model)})"


def _weights_line(model: ModelSpec) -> str:
    """", weights <file>" or ", weights ResNet101_Weights.IMAGENET1K_V2 (<hub cache file>)"."""
    w = model.backbone_weights
    if not w:
        return ""
    from tce_ray.models.pretrained import hub_cache_file, is_weights_name, resolve_weights

    if not is_weights_name(w):
        return f", weights {Path(w).name}"
    weights = resolve_weights(model.backbone, w)
    return f", weights {type(weights).__name__}.{weights.name} ({hub_cache_file(weights)})"


def _check_numbers(run: RunSpec, prefix: str, where: _Where) -> None:
    """Every number of the run finite (the schema refuses non-finite floats; a plugin's
    section may not)."""
    def walk(x: Any, path: str) -> None:
        if isinstance(x, float) and not math.isfinite(x):
            raise where.error(path, f"is {x}; every number must be finite")
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}")

    walk(run.model_dump(mode="python"), prefix)


# --------------------------------------------------------------------------- the whole check


def preflight(
    cfg: StudyConfig,
    *,
    file: str | os.PathLike[str] | None = None,
    address: str | None = None,
    cache_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    cpu_count: int | None = None,
) -> PreflightReport:
    """Check the study ``cfg`` (see the module doc) before Ray starts; raises :class:`PreflightError`.

    ``file``: the study file (for line numbers). ``address``: the Ray cluster the study
    will join (None: a local Ray, whose resources are this machine's). ``cache_dir``:
    where the data-check records go (default: :func:`verify_cache_dir` of the study's
    runs folder). ``progress``: gets a line while a large data set is checked (None:
    silent). ``cpu_count``: the machine's CPUs (default ``os.cpu_count()``; for tests).
    """
    t0 = time.monotonic()
    report = PreflightReport()
    raw_flat = True
    if file is not None:
        try:
            from tce_ray.study.yaml_load import load_yaml

            doc = load_yaml(Path(file).read_text(encoding="utf-8")).data
            raw_flat = not (isinstance(doc, dict) and "run" in doc)
        except Exception:  # already validated: only the line numbers depend on this
            pass
    where = _Where(os.fspath(file) if file is not None else None, raw_flat)
    _check_name(cfg, where)
    for line in (_check_storage(cfg, where), _check_optuna_storage(cfg, where)):
        if line:
            report.checked.append(line)
    _check_resources(cfg, address, where, report, cpu_count=cpu_count)
    if cache_dir is None:
        cache_dir = verify_cache_dir(storage_join(cfg.experiment_path(), "runs"))
    seen_data: dict[str, Any] = {}
    seen_model: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision / PIL chatter; errors are what matter here
        for prefix, run in _run_of_configurations(cfg):
            _check_numbers(run, prefix, where)
            dkey = json.dumps(run.data.model_dump(mode="json"), sort_keys=True) + f"/{run.train.batch_size}x{run.train.num_workers}"
            if dkey not in seen_data:
                train, line = _check_data(run, prefix, where, cache_dir, progress)
                seen_data[dkey] = train
                report.checked.append(line)
            train = seen_data[dkey]
            num_classes = int(train.num_classes) if train is not None else 2
            mkey = json.dumps(run.model.model_dump(mode="json"), sort_keys=True) + f"/{num_classes}"
            if mkey not in seen_model:
                seen_model.add(mkey)
                report.checked.append(_check_model(run.model, num_classes, prefix, where))
    report.seconds = time.monotonic() - t0
    return report
