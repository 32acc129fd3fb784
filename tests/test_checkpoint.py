import json
import os

import pytest
import torch

from iqvae.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from iqvae.errors import CheckpointError


def test_flatten_round_trip_of_optimizer_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    tree = {"opt": opt.state_dict(), "step": 7, "tup": (1, "a"), "rng": torch.get_rng_state()}
    tensors, skel = flatten_state(tree)
    json.dumps(skel)  # JSON-able
    back = unflatten_state(tensors, skel)
    assert back["step"] == 7 and back["tup"] == (1, "a")
    assert torch.equal(back["rng"], tree["rng"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(opt2.state_dict()["state"][k][name]), torch.as_tensor(t))


def test_save_load_and_atomic_replace(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, kind="k", config={"a": 1}, model_state={"w": torch.arange(4.0)}, train_state={"step": 1})
    save_checkpoint(path, kind="k", config={"a": 2}, model_state={"w": torch.ones(4)}, train_state={"step": 2})
    ck = load_checkpoint(path, "k", with_train_state=True)
    assert ck.config == {"a": 2} and torch.equal(ck.model_state["w"], torch.ones(4)) and ck.train_state["step"] == 2
    leftovers = [p for p in os.listdir(tmp_path) if p != "ck"]
    assert leftovers == []


def test_wrong_kind_and_missing_files(tmp_path):
    save_checkpoint(tmp_path / "ck", kind="tokenizer", config={}, model_state={"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="holds a 'tokenizer' checkpoint, expected 'transformer'"):
        load_checkpoint(tmp_path / "ck", "transformer")
    with pytest.raises(CheckpointError, match="no training state"):
        load_checkpoint(tmp_path / "ck", with_train_state=True)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ck")
