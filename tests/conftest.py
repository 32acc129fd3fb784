import os

import pytest
import torch

# Two cores here and in CI: keep each test process on few threads so runs are predictable.
torch.set_num_threads(int(os.environ.get("IQVAE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
