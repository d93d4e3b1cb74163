"""``backbone_weights`` by name (``imagenet``, ``IMAGENET1K_V1``, ``<Enum>_Weights.<member>``)
through torchvision's weights API and a fake torch hub cache (TORCH_HOME = tmp_path; every
download is refused), the offline one-line error, and local files that wrap the state dict."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V3_Large_Weights, ResNet101_Weights, mobilenet_v3_large

from tce_ray.models import build_encoder, deeplabv3plus
from tce_ray.models.backbones import TinyBackbone
from tce_ray.models.pretrained import WeightsUnavailable, hub_cache_file, is_weights_name, resolve_weights


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path; a download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[str] = []

    def offline(url, dst, *args, **kwargs):  # noqa: ANN001
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return {"dir": tmp_path / "torch" / "hub" / "checkpoints", "downloads": calls}


def _fake_mobilenet_file(hub_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """A MobileNetV3-Large state dict with recognisable values, saved where torchvision looks."""
    torch.manual_seed(0)
    net = mobilenet_v3_large(weights=None)
    with torch.no_grad():
        net.features[0][0].weight.fill_(0.125)
    state = net.state_dict()
    hub_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, hub_dir / name)
    return state


def test_the_cache_file_is_torchvisions(hub):
    w = resolve_weights("resnet101", "imagenet")
    assert w is ResNet101_Weights.DEFAULT is ResNet101_Weights.IMAGENET1K_V2
    assert hub_cache_file(w) == hub["dir"] / "resnet101-cd907fc2.pth"
    assert resolve_weights("resnet101", "IMAGENET1K_V1") is ResNet101_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet101", "ResNet101_Weights.IMAGENET1K_V2") is ResNet101_Weights.IMAGENET1K_V2
    assert resolve_weights("mobilenet_v3_large", "DEFAULT") is MobileNet_V3_Large_Weights.IMAGENET1K_V2


@pytest.mark.parametrize("name", ["imagenet", "IMAGENET1K_V2", "MobileNet_V3_Large_Weights.IMAGENET1K_V2"])
def test_named_weights_load_from_the_cache_without_network(hub, name):
    file = Path(MobileNet_V3_Large_Weights.IMAGENET1K_V2.url).name
    state = _fake_mobilenet_file(hub["dir"], file)
    enc = build_encoder("mobilenet_v3_large", 16, name)
    first = dict(enc.module.named_parameters())["0.0.weight"]
    assert torch.equal(first, state["features.0.0.weight"]) and float(first.detach().flatten()[0]) == 0.125
    assert hub["downloads"] == []
    model = deeplabv3plus(3, "mobilenet_v3_large", 8, name)  # the dilated OS8 variant has the same tensors
    assert torch.equal(dict(model.backbone.named_parameters())["0.0.weight"], state["features.0.0.weight"])


def test_offline_without_the_file_says_which_file_to_place(hub):
    with pytest.raises(WeightsUnavailable) as info:
        deeplabv3plus(3, "resnet101", 16, "imagenet")
    text = str(info.value)
    expected = hub["dir"] / "resnet101-cd907fc2.pth"
    assert "\n" not in text and str(expected) in text and ResNet101_Weights.IMAGENET1K_V2.url in text
    assert "ResNet101_Weights.IMAGENET1K_V2" in text and "Name or service not known" in text
    assert info.value.cache_file == str(expected)
    assert hub["downloads"] == [ResNet101_Weights.IMAGENET1K_V2.url]  # torchvision's own download was tried


@pytest.mark.parametrize("backbone, name, match", [
    ("resnet101", "IMAGENET1K_V9", "ResNet101_Weights has no such member"),
    ("resnet101", "ResNet50_Weights.IMAGENET1K_V2", "are not weights of resnet101"),
    ("resnet101", "NoSuch_Weights.X", "are not weights of resnet101"),
    ("tiny", "imagenet", "has no torchvision weights"),
])
def test_a_wrong_name_lists_the_choices(backbone, name, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_weights(backbone, name)
    if backbone != "tiny":
        assert "IMAGENET1K_V1" in str(info.value) or "<member>" in str(info.value)


def test_names_and_files_are_told_apart():
    for name in ("imagenet", "ImageNet", "IMAGENET1K_V2", "DEFAULT", "ResNet101_Weights.IMAGENET1K_V2"):
        assert is_weights_name(name), name
    for path in ("weights.pth", "/data/r101.pt", "./IMAGENET1K_V2.pth", "imagenet.pth", "my_weights"):
        assert not is_weights_name(path), path


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module", "checkpoint"])
def test_a_local_file_may_wrap_the_state_dict(tmp_path, wrap):
    torch.manual_seed(1)
    state = TinyBackbone().state_dict()
    if wrap == "module":  # DistributedDataParallel's prefix
        blob = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "checkpoint":  # a training checkpoint: the state dict under "model", with other entries
        blob = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "optimizer": {}}
    else:
        blob = {wrap: state}
    torch.save(blob, tmp_path / "w.pt")
    enc = build_encoder("tiny", 16, tmp_path / "w.pt")
    for k, v in enc.module.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_file_of_non_tensors_is_refused(tmp_path):
    torch.save({"a": 1, "b": "x"}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="are not tensors"):
        build_encoder("tiny", 16, tmp_path / "w.pt")


def test_the_study_file_checks_the_name_against_the_backbone():
    from tce_ray.train.runspec import ModelSpec

    assert ModelSpec(backbone="resnet101", backbone_weights="imagenet").backbone_weights == "imagenet"
    with pytest.raises(ValueError, match="'tiny' backbone has none"):
        ModelSpec(backbone="tiny", backbone_weights="IMAGENET1K_V2")
    assert ModelSpec(backbone="tiny", backbone_weights="tiny.pt").backbone_weights == "tiny.pt"


def _dry_run_study(tmp_path: Path, weights: str) -> Path:
    f = tmp_path / "pre.yaml"
    f.write_text("name: pre\ndata:\n  name: synthetic\n  options: {num_images: 4, image_size: [32, 32]}\n"
                 "  loader_workers: 0\n"
                 f"model:\n  backbone: mobilenet_v3_large\n  backbone_weights: {weights}\n"
                 "train: {steps: 2, eval_every: 2, batch_size: 2, num_workers: 1}\nsearch: {num_samples: 1}\n")
    return f


def test_the_dry_run_loads_named_weights_from_the_cache(hub, tmp_path, capsys):
    from tce_ray.cli import main

    _fake_mobilenet_file(hub["dir"], Path(MobileNet_V3_Large_Weights.IMAGENET1K_V2.url).name)
    rc = main([str(_dry_run_study(tmp_path, "imagenet")), "--dry-run", "--storage", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "weights MobileNet_V3_Large_Weights.IMAGENET1K_V2" in out and str(hub["dir"]) in out
    assert hub["downloads"] == []


def test_the_dry_run_offline_names_the_cache_file_in_one_line(hub, tmp_path, capsys):
    from tce_ray.cli import EXIT_BAD_INPUT, main

    f = _dry_run_study(tmp_path, "IMAGENET1K_V1")
    rc = main([str(f), "--dry-run", "--storage", str(tmp_path / "res")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == EXIT_BAD_INPUT and len(err) == 1, err
    expected = hub["dir"] / Path(MobileNet_V3_Large_Weights.IMAGENET1K_V1.url).name
    assert err[0].startswith(f"error: {f}:8: model.backbone_weights: ") and str(expected) in err[0]
