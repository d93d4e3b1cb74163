"""Tests for tce_ray.core.objectives: built-ins vs hand-computed values, registry rules, module paths."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tce_ray.core.objectives as objectives
from tce_ray.core.objectives import Objective, get_objective, list_objectives, register_objective

BUILTINS = {"miou": "max", "worst_iou": "max", "iou_std": "min", "bottom25_miou": "max", "p25_iou": "max", "iou_gap": "min"}


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    saved = dict(objectives._REGISTRY)
    yield
    objectives._REGISTRY.clear()
    objectives._REGISTRY.update(saved)


def test_builtins_are_registered_with_modes() -> None:
    assert set(BUILTINS) <= set(list_objectives())
    assert list_objectives() == sorted(list_objectives())
    for name, mode in BUILTINS.items():
        obj = get_objective(name)
        assert isinstance(obj, Objective) and obj.name == name and obj.mode == mode and obj.doc


def test_builtins_hand_computed_with_absent_class() -> None:
    iou = np.array([0.1, np.nan, 0.5, 0.3, 0.9, 0.7])  # present: 0.1 0.3 0.5 0.7 0.9
    assert get_objective("miou")(iou) == pytest.approx(0.5)
    assert get_objective("worst_iou")(iou) == pytest.approx(0.1)
    assert get_objective("iou_std")(iou) == pytest.approx(np.sqrt(0.4 / 4))  # sum sq dev = .16+.04+0+.04+.16
    assert get_objective("p25_iou")(iou) == pytest.approx(0.3)  # position 1.0 of sorted
    assert get_objective("bottom25_miou")(iou) == pytest.approx(0.2)  # mean of 0.1, 0.3
    assert get_objective("iou_gap")(iou) == pytest.approx(0.8)
    assert isinstance(get_objective("miou")(iou), float)


def test_builtin_all_nan_fails_with_name() -> None:
    with pytest.raises(ValueError, match="'iou_gap'.*NaN"):
        get_objective("iou_gap")(np.array([np.nan, np.nan]))


def test_register_get_and_duplicate() -> None:
    @register_objective("median_iou", "max")
    def median_iou(iou: np.ndarray) -> float:
        """Median IoU."""
        return float(np.nanmedian(iou))

    assert median_iou(np.array([0.1, 0.2, 0.9])) == pytest.approx(0.2)  # decorator returns fn
    obj = get_objective("median_iou")
    assert obj.mode == "max" and obj.fn is median_iou and obj.doc == "Median IoU."
    assert "median_iou" in list_objectives()
    with pytest.raises(ValueError, match="median_iou.*already registered.*override"):
        register_objective("median_iou", "min")(lambda iou: 0.0)
    with pytest.raises(ValueError, match="miou.*already registered"):
        register_objective("miou", "max")(lambda iou: 0.0)

    register_objective("median_iou", "min", override=True)(lambda iou: 1.0)
    assert get_objective("median_iou").mode == "min" and get_objective("median_iou")(np.ones(2)) == 1.0


def test_bad_direction_and_name() -> None:
    with pytest.raises(ValueError, match="direction.*'maximize' or 'minimize'.*'up'"):
        register_objective("x", "up")  # type: ignore[arg-type]
    # Optuna's spelling is the stored one; the short form is accepted and stored long
    register_objective("x_long", "maximize")(lambda iou: 0.0)
    register_objective("x_short", "min")(lambda iou: 0.0)
    assert get_objective("x_long").direction == "maximize" and get_objective("x_long").mode == "max"
    assert get_objective("x_short").direction == "minimize" and get_objective("x_short").mode == "min"
    with pytest.raises(ValueError, match="name"):
        register_objective("", "max")


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(ValueError, match=r"unknown objective 'nope'.*bottom25_miou.*miou"):
        get_objective("nope")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.array([0.1, 0.2]), "0.5", None, [0.3], True])
def test_non_finite_or_non_scalar_results_fail_with_name(bad: object) -> None:
    register_objective("broken", "max")(lambda iou: bad)
    with pytest.raises(ValueError, match="'broken'"):
        get_objective("broken")(np.array([0.1, 0.2]))


def test_scalar_like_results_are_accepted() -> None:
    register_objective("zero_d", "max")(lambda iou: np.array(0.25))
    register_objective("np_float", "max")(lambda iou: np.float32(0.5))
    assert get_objective("zero_d")(np.ones(3)) == 0.25
    assert get_objective("np_float")(np.ones(3)) == 0.5


def test_input_must_be_1d_numeric() -> None:
    with pytest.raises(ValueError, match="'miou'.*1-D"):
        get_objective("miou")(np.ones((2, 3)))
    with pytest.raises(ValueError, match="'miou'.*numeric"):
        get_objective("miou")(["a", "b"])


def _write_module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_module_function_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = "tce_test_user_objs"
    _write_module(
        tmp_path,
        mod,
        """
        import numpy as np
        from tce_ray.core.objectives import register_objective

        @register_objective("user_min_plus_mean", "max")
        def min_plus_mean(iou):
            u = iou[~np.isnan(iou)]
            return float(u.min() + u.mean())

        def plain(iou):
            return 0.0

        NOT_CALLABLE = 3
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, mod, raising=False)
    try:
        obj = get_objective(f"{mod}:min_plus_mean")
        assert obj.name == "user_min_plus_mean" and obj.mode == "max"
        assert obj(np.array([0.2, np.nan, 0.6])) == pytest.approx(0.6)
        assert get_objective("user_min_plus_mean") is obj
        with pytest.raises(ValueError, match=r"plain.*@register_objective\(name, direction\)"):
            get_objective(f"{mod}:plain")
        with pytest.raises(ValueError, match="not a function"):
            get_objective(f"{mod}:NOT_CALLABLE")
        with pytest.raises(ValueError, match="no attribute 'missing'"):
            get_objective(f"{mod}:missing")
    finally:
        sys.modules.pop(mod, None)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        get_objective("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="package.module:function"):
        get_objective(":f")


def test_the_first_releases_mode_spelling_still_registers_with_a_warning():
    with pytest.warns(DeprecationWarning, match="direction="):
        register_objective("old_mode_max", mode="max", override=True)(lambda iou: float(np.nanmax(iou)))
    assert get_objective("old_mode_max").direction == "maximize"
    with pytest.warns(DeprecationWarning):
        register_objective("old_mode_min", mode="min", override=True)(lambda iou: 0.0)
    assert get_objective("old_mode_min").direction == "minimize"


def test_direction_and_mode_together_or_neither_are_refused():
    with pytest.raises(TypeError, match="not both"):
        register_objective("both", "max", mode="max")
    with pytest.raises(TypeError, match="needs direction"):
        register_objective("neither")
