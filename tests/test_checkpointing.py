"""tce_ray.train.checkpointing: what a checkpoint holds, written and read back, and what it refuses."""

from __future__ import annotations

import pickle

import pytest
import torch

from tce_ray.train.checkpointing import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    load_training_state,
    save_training_state,
)
from tce_ray.models import deeplabv3plus
from tce_ray.train.weights_actor import state_hash

torch.set_num_threads(1)


def training_state(step: int = 7) -> tuple[dict, torch.nn.Module, torch.optim.Optimizer]:
    net = deeplabv3plus(3, "tiny", 16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(1, 3, 32, 32)).mean().backward()
    opt.step()  # momentum buffers: the optimizer state is not empty
    ws = {"version": 1, "log_r": [0.1, 0.2, 0.3]}
    state = {
        "format": CHECKPOINT_FORMAT, "step": step, "model": net.state_dict(), "optimizer": opt.state_dict(),
        "scaler": None, "rng": {"seed": 0, "step": step}, "weight_state": ws, "weight_state_hash": state_hash(ws),
        "run": {"x": [1, 2]},
    }  # fmt: skip
    return state, net, opt


def test_roundtrip_restores_model_optimizer_and_weight_state(tmp_path):
    state, net, opt = training_state()
    path = save_training_state(tmp_path, state)
    assert path == tmp_path / CHECKPOINT_FILE and path.is_file()
    back = load_training_state(tmp_path)
    assert set(back) == set(REQUIRED_KEYS)
    assert back["step"] == 7 and back["rng"] == {"seed": 0, "step": 7} and back["run"] == {"x": [1, 2]}
    assert back["weight_state"] == state["weight_state"] and back["weight_state_hash"] == state_hash(back["weight_state"])
    fresh = deeplabv3plus(3, "tiny", 16)
    fresh.load_state_dict(back["model"])
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_opt.load_state_dict(back["optimizer"])
    momentum = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
    restored = [s["momentum_buffer"] for s in fresh_opt.state_dict()["state"].values()]
    assert len(momentum) == len(restored) > 0 and all(torch.equal(a, b) for a, b in zip(momentum, restored))


def test_tensors_come_back_on_the_cpu(tmp_path):
    state, _, _ = training_state()
    save_training_state(tmp_path, state)
    back = load_training_state(tmp_path)
    assert all(t.device.type == "cpu" for t in back["model"].values())


def test_save_refuses_an_incomplete_or_foreign_state(tmp_path):
    state, _, _ = training_state()
    with pytest.raises(ValueError, match=r"lacks \['step', 'model'"):
        save_training_state(tmp_path, {"format": CHECKPOINT_FORMAT})
    with pytest.raises(ValueError, match="format 2 is not 1"):
        save_training_state(tmp_path, {**state, "format": 2})
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # nothing was written


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_FILE):
        load_training_state(tmp_path / "nowhere")
    state, _, _ = training_state()
    # a file of another format, or with keys missing: named, with what to do
    torch.save({**state, "format": 0}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="format 0.*new name"):
        load_training_state(tmp_path)
    partial = {k: v for k, v in state.items() if k != "weight_state"}
    torch.save(partial, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"missing \['weight_state'\]"):
        load_training_state(tmp_path)


class NotPlainData:
    pass


def test_load_runs_no_pickled_code(tmp_path):
    # weights_only=True: a checkpoint may hold tensors and plain data, never objects to unpickle
    state, _, _ = training_state()
    save_training_state(tmp_path, {**state, "run": NotPlainData()})
    with pytest.raises(pickle.UnpicklingError, match="NotPlainData|weights_only"):
        load_training_state(tmp_path)
