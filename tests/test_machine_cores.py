"""usable_cores: the benches split their torch threads by the cores this process may run on."""

import os

import pytest

from iqvae.machine import machine_info, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_usable_cores_follows_the_affinity_mask():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == 1
        assert machine_info()["usable_cores"] == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)
