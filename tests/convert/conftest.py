import os

import pytest
import torch

from sparsedm.convert.arch import unregister_architecture
from tests.convert import toy_models


@pytest.fixture(autouse=True)
def toy_architectures():
    toy_models.register()
    yield
    unregister_architecture("toy_uvit")
    unregister_architecture("toy_unet")


def dir_listing(path):
    """Files in a directory (to check that nothing, not even a temp file, was left behind)."""
    return sorted(os.listdir(path))


def make_uvit(qkv_bias=True, seed=0, **overrides):
    torch.manual_seed(seed)
    config = {**toy_models.UVIT_CONFIG, "qkv_bias": qkv_bias, **overrides}
    return toy_models.build_uvit(config, device="cpu").eval(), config


def make_unet(seed=0):
    torch.manual_seed(seed)
    return toy_models.MiniUNet(**toy_models.UNET_CONFIG).eval(), dict(toy_models.UNET_CONFIG)
