"""The settings of one training run: what a study trial hands to the trainer.

A :class:`RunSpec` is plain, validated data (pydantic, JSON-serialisable) so that it can
travel to Ray workers inside ``train_loop_per_worker``'s config dict and be stored next
to every trial's results. The study's YAML (``tce_ray.study.config``) is a ``RunSpec`` plus
the search space, the objectives and the resources; a trial's run is the base run with the
trial's values applied by one validated merge (:meth:`RunSpec.merged`).

The ``loss`` section and the data-set names come from ``tce_ray.core.registry``: ``loss.name``
is a registered loss and the other keys of ``loss`` are the registered loss settings (each
with its type, bounds and default, stated once in its :class:`~tce_ray.core.registry.Setting`).
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from tce_ray.core.registry import DatasetEntry, get_dataset, list_losses, list_settings, registry_version, unknown_name_message

BUILTIN_STUDY = "studies/synthetic_fairness.yaml"


class KeyPathError(ValueError):
    """Raised inside validators to name an exact key path, relative to the validated
    value's own location (``tce_ray.study.config`` turns it into a ConfigError with the line)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...`` (not a Windows drive letter)."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", path))


def _takes_bool(tp: Any) -> bool:
    """Whether a field's annotation accepts a boolean anywhere (bool, Any, Literal[True])."""
    if tp is bool or tp is Any or (tp is True or tp is False):
        return True
    return any(_takes_bool(arg) for arg in typing.get_args(tp))


def _has_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_has_bool(v) for v in value))


def reject_bools(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A before-validator for every field: pydantic's lax mode reads ``true`` as 1 (and
    1.0), so ``batch_size: true`` would train with batch size 1. Fields whose annotation
    names ``bool`` or ``Any`` keep their booleans."""
    field = model.model_fields.get(info.field_name or "")
    if field is not None and not _takes_bool(field.annotation) and _has_bool(value):
        raise ValueError("a boolean (true/false) is not a number here; write a number (e.g. 4 or 0.1)")
    return value


class _Strict(BaseModel):
    """Unknown keys are errors, booleans are not numbers, and every float must be finite
    (a field that may be infinite says so with ``Field(allow_inf_nan=True)``; none does)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, v: Any, info: ValidationInfo) -> Any:
        return reject_bools(cls, v, info)


class RegistryShaped(BaseModel):
    """A section whose keys come from ``tce_ray.core.registry``: validated by a pydantic model
    built from the registry (:meth:`schema_model`, rebuilt when an entry is added), its
    values held as this model's attributes (``spec.t``) and dumped in the schema's order."""

    model_config = ConfigDict(extra="allow")
    _schemas: ClassVar[dict[type, tuple[int, type[BaseModel]]]] = {}

    @classmethod
    def build_schema(cls) -> type[BaseModel]:
        raise NotImplementedError

    @classmethod
    def schema_model(cls) -> type[BaseModel]:
        cached = RegistryShaped._schemas.get(cls)
        if cached is None or cached[0] != registry_version():
            model = cls.build_schema()
            cached = RegistryShaped._schemas[cls] = (registry_version(), model)
        return cached[1]

    @model_validator(mode="wrap")
    @classmethod
    def _via_registry(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return handler(data)
        schema = cls.schema_model()
        inner = schema.model_validate(data, context=info.context)  # errors keep their key paths
        return handler({k: getattr(inner, k) for k in schema.model_fields})


class DataSpec(_Strict):
    """Which data set to train and evaluate on (``tce_ray.data.build_dataset``)."""

    name: str = "synthetic"
    """A registered data set (``tce_ray.core.registry.list_datasets()``)."""
    root: str | None = Field(None, validate_default=True)
    """The data folder (not for generated data sets). Validated by ``tce_ray.study.config`` (the
    context ``check_paths``): the data set's environment variable when absent, must exist,
    made absolute (Ray workers run elsewhere)."""
    train_split: str = "train"
    val_split: str = "val"
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to ``build_dataset`` for both splits (e.g. ``num_images``, ``image_size``)."""

    @field_validator("options")
    @classmethod
    def _finite_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        def walk(x: Any, where: str) -> None:
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{where} is {x}; every number must be finite (.inf, .nan and numbers "
                                 "beyond 1.8e308 are not allowed)")
            for k, y in (x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()):
                walk(y, f"{where}.{k}")

        for key, value in v.items():
            walk(value, str(key))
        return v
    crop_size: int | tuple[int, int] | None = None
    """Training crop (square for an int); ``None`` trains on whole images."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    loader_workers: int = Field(2, ge=0)
    """DataLoader processes per training worker."""
    verify: bool = True
    """Before Ray starts (``tce_ray.study.preflight``): decode every image and check every label
    map of both splits, once per data-set fingerprint (cached). ``false`` skips it (huge
    data sets): a bad file then fails the trials that read it."""

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from tce_ray.core.registry import list_datasets

        if v not in list_datasets():
            raise KeyPathError("", unknown_name_message("data set", v, list_datasets()))
        return v

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if name is None:
            return v  # the name was wrong: that error is the one to show
        entry = get_dataset(name)
        if not entry.takes_root:
            if v:
                raise KeyPathError("", 
                    f"the {name} data set is generated on the fly and takes no root; remove data.root "
                    "(or set data.name to the data set that lives there)"
                )
            return v
        if not (info.context or {}).get("check_paths"):
            return v
        return _checked_root(entry, v)


def _checked_root(entry: DatasetEntry, root: str | None) -> str:
    """The root to use: the given one, else the data set's environment variable; a local
    folder must exist and is made absolute. Raises KeyPathError saying where the data goes."""
    what, var = entry.root_holds, entry.env_var
    env_hint = f", or set {var} to where it is" if var else ""
    howto = f"To try the method without downloading anything, run the built-in study: python -m tce_ray.study {BUILTIN_STUDY}"
    if not root and var and os.environ.get(var):
        root = os.environ[var]  # the data module's own fallback; checked below like a given root
    if not root:
        raise KeyPathError("", f"the {entry.name} data set needs data.root: the folder holding {what}{env_hint}. {howto}")
    if is_uri(root):
        return root  # remote data: the data module checks it on the workers
    path = Path(root).expanduser()
    if not path.is_dir():
        raise KeyPathError("", 
            f"no {entry.name} data at {str(path)!r} (resolved to {path.resolve()}): put {what} there{env_hint}. {howto}"
        )
    return str(path.resolve())  # absolute, so that Ray workers (whose working directory is not the user's) find it


_IMAGENET_BACKBONES = ("resnet50", "resnet101", "mobilenet_v3_large")
"""The backbones with torchvision weights (``tce_ray.models.pretrained.IMAGENET_BACKBONES``)."""


class ModelSpec(_Strict):
    """DeepLabv3+ (``tce_ray.models.deeplabv3plus``)."""

    backbone: str = "tiny"
    output_stride: Literal[8, 16] = 16
    backbone_weights: str | None = None
    """The backbone's initial weights: a local state-dict file (possibly under ``state_dict`` /
    ``model``, with DDP's ``module.`` prefix) or a torchvision weights name, ``imagenet``,
    ``IMAGENET1K_V2`` or ``ResNet101_Weights.IMAGENET1K_V2`` (torch hub cache; downloaded when
    online). The preflight loads them; this only checks that a name suits the backbone."""

    @model_validator(mode="after")
    def _weights_name(self) -> ModelSpec:
        w = self.backbone_weights
        named = w is not None and (w.lower() == "imagenet" or re.fullmatch(r"(?:\w+_Weights\.)?[A-Z][A-Z0-9_]*", w))
        if named and self.backbone not in _IMAGENET_BACKBONES:
            raise KeyPathError("backbone_weights", (
                f"backbone_weights {w!r} names torchvision weights but the {self.backbone!r} backbone has none; use "
                f"one of {list(_IMAGENET_BACKBONES)} or a local state-dict file"))
        return self


class LossSpec(RegistryShaped):
    """The loss and its settings: ``name`` (a registered loss) and every registered loss
    setting (``t``, ``gamma``, ``focal_gamma``, ``focal_alpha``, ``tilt_signal``,
    ``weight_floor``, ``min_pixels``, and those plugins add), each with its default. A loss
    uses the settings its registry entry lists; the others are carried and ignored."""

    if TYPE_CHECKING:  # the built-in settings, for type checkers (the schema is the registry's)
        name: str
        t: float
        gamma: float
        focal_gamma: float
        focal_alpha: str | list[float]
        tilt_signal: str
        weight_floor: float
        min_pixels: int

    @classmethod
    def build_schema(cls) -> type[BaseModel]:
        fields: dict[str, Any] = {"name": (Literal[tuple(list_losses())], "mcce")}
        for s in list_settings():
            fields[s.name] = (s.annotation(), Field(s.default, description=s.doc))
        return create_model("LossSpec", __base__=_Strict, **fields)  # strict: no bools, finite floats


class OptimSpec(_Strict):
    """SGD with momentum and a poly schedule, as the DeepLabv3+ reference."""

    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0)


class TrainSpec(_Strict):
    """Length, batch, evaluation cadence and scale of one run."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    """Images per worker per step."""
    eval_every: int = Field(100, ge=1)
    """Evaluate (and checkpoint) every this many steps, and at the end."""
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0)
    """GPUs per worker with ``use_gpu`` (Ray's fractional GPUs): below 1 several workers (of
    one trial or of concurrent trials) share a GPU, e.g. 0.25 puts four small-model trials
    of one worker each on one GPU; above 1 a whole number. Their memory is not isolated:
    the models must fit together."""
    amp: bool = True
    """Autocast on GPU (ignored on CPU)."""
    seed: int = 0
    max_failures: int = Field(1, ge=0)
    """Worker-group restarts from the last checkpoint before the run fails."""
    stall_timeout: float | None = Field(600.0, ge=0.0)
    """Seconds without a training step, an evaluated batch or a report on a worker before
    that worker's attempt fails (its stacks are dumped, then Ray Train restarts it from the
    last checkpoint, ``max_failures``); the limit used is at least 20 x the attempt's
    median step. 0 or null: no watchdog (``tce_ray.train.stall_watchdog``)."""
    weight_sync_every: int = Field(4, ge=1)
    """Stochastic TCE: steps between a worker's exchanges with the weight actor (reports sent,
    weights refreshed). 4 keeps the step overhead within 3% of MCCE on a 2-core CPU
    (``benchmarks/bench_step_overhead.py``); the lag this adds is documented in
    ``tce_ray.train.weights_actor``."""

    @model_validator(mode="after")
    def _gpus(self) -> TrainSpec:
        g = self.gpus_per_worker
        if g != 1.0 and not self.use_gpu:
            raise KeyPathError("gpus_per_worker",
                f"gpus_per_worker={g:g} needs use_gpu: true (a CPU run holds no GPU); set use_gpu: true or remove it")
        if g > 1.0 and g != int(g):
            raise KeyPathError("gpus_per_worker",
                f"gpus_per_worker={g:g}: Ray shares a GPU in fractions below 1, above 1 it takes whole GPUs; "
                "use a fraction such as 0.5 or a whole number such as 2")
        return self


SAMPLING_MODES: tuple[str, ...] = ("default", "rare_class")


class SamplingSpec(_Strict):
    """How the training batches are drawn (``tce_ray.data.sampling``).

    ``mode``: ``default``: the loss decides (``tce_stochastic`` draws a class from its
    tilted weights, then images containing it; every other loss shuffles the images);
    ``rare_class``: static rare-class sampling (DAFormer, Hoyer et al. 2022): a class with
    probability ``∝ exp((1 - f_c) / temperature)`` (``f_c``: its share of the training
    pixels), then images containing it; for any loss but ``tce_stochastic``.
    ``image_power`` and ``class_crop`` act whenever batches are drawn by class
    (``tce_stochastic``, or ``mode: rare_class``). The paper's Algorithm 1 is
    ``image_power: 0, class_crop: false``: the defaults.
    """

    mode: Literal["default", "rare_class"] = "default"
    temperature: float = Field(0.01, gt=0.0)
    """Rare-class sampling's T (DAFormer's 0.01): lower puts more draws on the rarest classes."""
    image_power: float = Field(0.0, ge=0.0)
    """P(image m | class c) ∝ n_{m,c} ** image_power over D_c: 0 uniform (the paper), 1 ∝ the
    class's pixels in the image, higher favours the images where the class is large."""
    class_crop: bool = False
    """Centre each training crop on a pixel of the batch's drawn class (the crop's size, scale
    and flip stay random); false: the crop is placed at random (the paper)."""


def check_sampling(loss_name: str, sampling: SamplingSpec) -> None:
    """Raise :class:`KeyPathError` when ``sampling`` does not apply to ``loss_name``."""
    stochastic = loss_name == "tce_stochastic"
    if sampling.mode == "rare_class" and stochastic:
        raise KeyPathError("mode",
            "rare_class draws classes from fixed probabilities, but tce_stochastic draws them from its tilted "
            "weights; use mode: default with tce_stochastic, or rare_class with another loss")
    by_class = stochastic or sampling.mode == "rare_class"
    if not by_class and (sampling.image_power != 0.0 or sampling.class_crop):
        key = "image_power" if sampling.image_power != 0.0 else "class_crop"
        raise KeyPathError(key,
            f"sampling.image_power and sampling.class_crop act only when batches are drawn by class, and loss "
            f"{loss_name!r} with sampling.mode: default shuffles the images; set sampling.mode: rare_class, use "
            "loss tce_stochastic, or leave image_power: 0 and class_crop: false")


class RunSpec(_Strict):
    """Everything one training run needs; JSON round-trips through ``model_dump``."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    objectives: list[str] = Field(default_factory=lambda: ["worst_iou", "iou_std"])
    """Registry names (``tce_ray.core.objectives``) computed at every evaluation."""
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    """How batches are drawn: :class:`SamplingSpec`."""

    @model_validator(mode="after")
    def _sampling_fits_loss(self) -> RunSpec:
        try:
            check_sampling(self.loss.name, self.sampling)
        except KeyPathError as e:
            raise KeyPathError(f"sampling.{e.path}", e.message) from None
        return self

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one objective (e.g. [worst_iou, iou_std])")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate objectives in {v}")
        return v

    def merged(self, overrides: Mapping[str, Any]) -> RunSpec:
        """This run with ``overrides`` applied, validated once as a whole: ``{section: {key:
        value}}`` updates a section (None values are skipped: the base value stays), any other
        value replaces the key (``{"objectives": [...]}``)."""
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **{k: v for k, v in value.items() if v is not None}}
            else:
                data[key] = value
        return RunSpec.model_validate(data)


# --------------------------------------------------------------------------- search parameters
# Sampling settings a study may search (``search.sampling_mode``, ...; Optuna names
# ``sampling/mode``, ...). Each exists only where it acts (asked after ``loss/name``, in this order).


def _draws_by_class(view: Mapping[str, Any]) -> bool:
    return view["loss.name"] == "tce_stochastic" or view["sampling.mode"] == "rare_class"


def _mode_applies(view: Mapping[str, Any]) -> bool:
    return view["loss.name"] != "tce_stochastic"


def _temperature_applies(view: Mapping[str, Any]) -> bool:
    return view["loss.name"] != "tce_stochastic" and view["sampling.mode"] == "rare_class"


def _register_sampling_params() -> None:
    from tce_ray.core.registry import Bounds, SearchParam, register_search_param

    register_search_param(SearchParam("sampling_mode", "sampling.mode", "choice", choices=SAMPLING_MODES,
                                      applies=_mode_applies))
    register_search_param(SearchParam("temperature", "sampling.temperature", "range", Bounds(gt=0.0), finite=True,
                                      applies=_temperature_applies))
    register_search_param(SearchParam("image_power", "sampling.image_power", "range", Bounds(ge=0.0), finite=True,
                                      applies=_draws_by_class))
    register_search_param(SearchParam("class_crop", "sampling.class_crop", "choice", choices=(False, True),
                                      applies=_draws_by_class))


_register_sampling_params()
