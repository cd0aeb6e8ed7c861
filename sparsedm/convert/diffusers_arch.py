"""diffusers UNets as architectures (needs the ``diffusers`` extra: ``pip install 'sparsedm[diffusers]'``).

Config = the model's ``config.json``; every Conv2d and Linear whose reduction length is a
multiple of 8 is a 2:4 candidate (applied with ``--prune`` or found already zeroed).
"""

from __future__ import annotations

from torch import nn

from sparsedm.convert.arch import Architecture, register_architecture


def _candidates(model: nn.Module) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features % 8 == 0:
            names.append(name)
        elif isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels % 8 == 0:
            names.append(name)
    return names


def register() -> None:
    import diffusers
    import torch

    for arch, cls in (("diffusers_unet2d", diffusers.UNet2DModel), ("diffusers_unet2d_condition", diffusers.UNet2DConditionModel)):
        def build(config: dict, device: str = "meta", cls=cls) -> nn.Module:
            with torch.device(device):
                return cls.from_config(config)

        register_architecture(Architecture(name=arch, build=build, sparse_layers=_candidates))
