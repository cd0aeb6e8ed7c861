"""Tiny models shared by the training tests."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, d=32, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual MLP plus a Linear -> LayerNorm -> Linear chain and a residual add."""

    def __init__(self, d=32):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = Mlp(d, 2 * d)
        self.lin = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.out = nn.Linear(d, d)
        self.head = nn.Linear(d, 12)  # K = 32 is fine; the 12 outputs do not matter
        self.odd = nn.Linear(12, 8)  # K = 12: not a multiple of 8, stays dense

    def forward(self, x):
        x = x + self.mlp(self.norm(x))
        x = self.out(self.ln2(self.lin(x))) + x
        return self.odd(self.head(x) * 0.5)


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.gn1 = nn.GroupNorm(1, 16)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.silu(self.gn(self.c2(x)))
        x = self.c3(x)
        x = self.c4(torch.sigmoid(self.gn1(x)))
        return self.dw(x)


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: fx fails here, so children are traced alone."""

    def __init__(self):
        super().__init__()
        self.mlp = Mlp(32, 64)

    def forward(self, x):
        if x.sum() > 0:
            return self.mlp(x)
        return -self.mlp(x)


def perturb(model, seed=0):
    """Random, non-trivial norm parameters and running statistics (fresh data, never zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model
