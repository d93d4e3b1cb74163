"""The settings of one training run: what a study trial hands to the trainer.

A :class:`RunSpec` is plain, validated data (pydantic, JSON-serialisable) so that it can
travel to Ray workers inside ``train_loop_per_worker``'s config dict and be stored next
to every trial's results. The study's YAML (``tce_ray.config``) is a ``RunSpec`` plus
the search space, the objectives and the resources; a trial fills in the sampled values
and hands the result to ``tce_ray.train``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LossName = Literal["mcce", "focal", "tce_image", "tce_class", "tce_stochastic"]
TCE_LOSSES: tuple[str, ...] = ("tce_image", "tce_class", "tce_stochastic")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Strict):
    """Which data set to train and evaluate on (``tce_ray.data.build_dataset``)."""

    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to ``build_dataset`` for both splits (e.g. ``num_images``, ``image_size``)."""
    crop_size: int | tuple[int, int] | None = None
    """Training crop (square for an int); ``None`` trains on whole images."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    loader_workers: int = Field(2, ge=0)
    """DataLoader processes per training worker."""


class ModelSpec(_Strict):
    """DeepLabv3+ (``tce_ray.models.deeplabv3plus``)."""

    backbone: str = "tiny"
    output_stride: Literal[8, 16] = 16
    backbone_weights: str | None = None
    """A local torchvision state-dict file; never downloaded."""


class LossSpec(_Strict):
    """The loss and, for stochastic TCE, the class-weight state."""

    name: LossName = "mcce"
    t: float = 1.0
    """Tilt of the TCE losses (ignored by ``mcce`` and ``focal``)."""
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    """Rate of stochastic TCE's running tilted loss, in (0, 1]."""
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_alpha: Literal["inverse_frequency", "none"] | list[float] = "inverse_frequency"
    tilt_signal: Literal["batch", "class"] = "batch"
    """What a worker reports for stochastic TCE: whole-batch MCCE (the paper) or the CE
    over the drawn class's pixels (the project's extension)."""
    weight_floor: float = Field(0.0, ge=0.0, le=1.0)
    """Mix the tilted weights with uniform so no drawable class is drawn below floor/K."""
    min_pixels: int = Field(1, ge=1)
    """Pixels of a class an image needs to count as containing it (the index D_c)."""

    @field_validator("t")
    @classmethod
    def _finite_t(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("t must be a finite number")
        return v


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
    amp: bool = True
    """Autocast on GPU (ignored on CPU)."""
    seed: int = 0
    max_failures: int = Field(1, ge=0)
    """Worker-group restarts from the last checkpoint before the run fails."""
    weight_sync_every: int = Field(4, ge=1)
    """Stochastic TCE: steps between a worker's exchanges with the weight actor (reports sent,
    weights refreshed). 4 keeps the step overhead within 3% of MCCE on a 2-core CPU
    (``benchmarks/bench_step_overhead.py``); the lag this adds is documented in
    ``tce_ray.weights_actor``."""


class RunSpec(_Strict):
    """Everything one training run needs; JSON round-trips through ``model_dump``."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    objectives: list[str] = Field(default_factory=lambda: ["worst_iou", "iou_std"])
    """Registry names (``tce_ray.objectives``) computed at every evaluation."""
