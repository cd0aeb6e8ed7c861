import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """The sampling tests run many small elementwise ops; on small CI machines intra-op threads
    cost more than they give (15 ms vs 6 us for an 8k-element sqrt on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
