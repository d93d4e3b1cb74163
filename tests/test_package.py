"""The package's public surface: every re-export resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tce_ray


@pytest.mark.parametrize("name", sorted(tce_ray._EXPORTS))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tce_ray, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tce_ray.nope  # noqa: B018


def test_core_import_does_not_start_or_import_ray() -> None:
    code = (
        "import sys, tce_ray; from tce_ray import build_loss, TiltState, fairness_report, ClassIndex;"
        "import tce_ray.core.baseline_losses;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
