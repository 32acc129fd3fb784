import os

import pytest
import torch

# Two cores here and in CI: keep each test process on few threads so runs are predictable.
torch.set_num_threads(int(os.environ.get("IQVAE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared 2-core
    machine two OpenMP threads per process are ~10x slower for the small convolution tests."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
