import pytest
import torch

from iqvae.errors import ConfigError
from iqvae.train.common import (LoopConfig, batch_indices, cuda_index, lr_at, make_accelerator, resolve_device,
                                 shard)


def test_batches_cover_each_epoch_exactly_once():
    n, b = 10, 3
    seen = [i for s in range(10) for i in batch_indices(s, b, n, seed=1)]  # 30 items = 3 epochs
    for e in range(3):
        assert sorted(seen[e * n:(e + 1) * n]) == list(range(n))
    assert batch_indices(4, b, n, 1) == batch_indices(4, b, n, 1)
    assert batch_indices(0, b, n, 1) != batch_indices(0, b, n, 2)


def test_shards_concatenate_to_the_global_batch():
    g = batch_indices(3, 8, 50, 0)
    assert shard(g, 0, 2) + shard(g, 1, 2) == g
    with pytest.raises(ConfigError, match="not divisible"):
        shard(g, 0, 3)


def test_lr_schedule_endpoints():
    cfg = LoopConfig(lr=1.0, warmup_steps=10, lr_schedule="cosine", lr_min=0.1, steps=110)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)


def test_device_option_is_checked():
    assert cuda_index("cuda:3") == 3 and cuda_index("cuda") is None and cuda_index("auto") is None
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"):
        with pytest.raises(ConfigError, match="'train.device' must be auto, cpu, cuda or cuda:N"):
            LoopConfig(device=bad).validate()


def test_device_is_resolved_against_the_machine(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == (True, None)
    assert resolve_device("cpu") == (True, None)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == (False, None)
    assert resolve_device("cuda") == (False, None)
    assert resolve_device("cuda:1") == (False, 1)
    with pytest.raises(ConfigError, match=r"'cuda:2' but this machine has 2 GPU\(s\)"):
        resolve_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch / torchrun: each process has its own GPU
    with pytest.raises(ConfigError, match="single process"):
        resolve_device("cuda:1")


def test_cuda_n_becomes_the_current_gpu(monkeypatch):
    import accelerate

    picked = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kw: kw)
    kw = make_accelerator(LoopConfig(device="cuda:1", mixed_precision="bf16"), grad_accum=2)
    assert picked == [1] and kw["cpu"] is False and kw["mixed_precision"] == "bf16"
    assert kw["gradient_accumulation_steps"] == 2


def test_each_stage_shows_only_the_loop_options_it_reads():
    from iqvae.config import describe
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    tok = {k for k, *_ in describe(TokenizerRunConfig) if k.startswith("train.")}
    gpt = {k for k, *_ in describe(TransformerRunConfig) if k.startswith("train.")}
    assert tok - gpt == {"train.image_every"}
    assert gpt - tok == {"train.grad_accum", "train.val_every"}
    assert {"train.device", "train.max_bad_steps"} <= tok & gpt
    with pytest.raises(ConfigError, match="'train.max_bad_steps' must be >= 0"):
        LoopConfig(max_bad_steps=-1).validate()
