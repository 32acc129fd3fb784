import pytest

from iqvae.errors import ConfigError
from iqvae.train.common import LoopConfig, batch_indices, lr_at, shard


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
