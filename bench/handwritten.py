"""Hand-written PyTorch baselines, the reference for einc's compiled networks.

Each class here has exactly the structure that einc compiles from the matching
grammar string, so parameter counts agree exactly. The conventions follow einc's
operations (``einc/ops``):

* "conv kxk"  -> ``nn.Conv2d(..., bias=True)`` (einc: im2col -> Linear with bias -> col2im;
  same parameter count, different weight layout);
* "norm"      -> ``nn.BatchNorm2d(C)`` on images (B, C, H, W), ``nn.LayerNorm(D)`` on tokens (B, S, D);
* "relu"      -> ``F.leaky_relu(x, 0.01)`` (the paper's "relu" is a leaky ReLU);
* head        -> mean over the spatial positions (H, W) or the sequence (S), then
  ``nn.Linear(width, num_classes)``.

Every model takes ``Model(num_classes=10, in_channels=3, image_size=64)``.

Run ``python bench/handwritten.py`` to check a forward and backward pass on a
(2, 3, 64, 64) batch and to print the parameter counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LEAKY_SLOPE = 0.01  # einc.ops.computation.LEAKY_SLOPE
POS_ENC_STD = 0.02  # einc.ops.computation.POS_ENC_STD


def relu(x: torch.Tensor) -> torch.Tensor:
    """The paper's "relu": leaky ReLU with slope 0.01."""
    return F.leaky_relu(x, LEAKY_SLOPE)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=True)


def param_count(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- convolutional


class BasicBlock(nn.Module):
    """Post-activation basic block.

    out = relu(norm(conv3x3(relu(norm(conv3x3(x, stride))))) + shortcut(x))

    shortcut is the identity when the shapes match, else conv1x1(stride) + norm.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.norm2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return relu(out + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; only the first one changes width and stride."""
    layers = [BasicBlock(cin, cout, stride)]
    layers += [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """ResNet-18, the einspace paper's variant.

    stem: conv3x3(in -> 64, stride 1, pad 1) + norm + relu,
          then conv3x3(64 -> 64, stride 2, pad 1) alone (no norm / relu; it replaces max-pool);
    stages: 4 x 2 basic blocks at widths 64, 128, 256, 512, strides 1, 2, 2, 2;
    head: mean over (H, W) -> Linear(512, num_classes).

    H and W must be divisible by 16.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 64):
        super().__init__()
        self.stem_conv = conv3x3(in_channels, 64)
        self.stem_norm = nn.BatchNorm2d(64)
        self.down = conv3x3(64, 64, stride=2)
        self.layer1 = _stage(64, 64, 2, 1)
        self.layer2 = _stage(64, 128, 2, 2)
        self.layer3 = _stage(128, 256, 2, 2)
        self.layer4 = _stage(256, 512, 2, 2)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(self.stem_norm(self.stem_conv(x)))
        x = self.down(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class WRN16_4(nn.Module):
    """Wide ResNet 16-4, post-activation (not WRN's usual pre-activation).

    stem: conv3x3(in -> 16) + norm + relu;
    groups: 3 x 2 basic blocks at widths 64, 128, 256, strides 1, 2, 2
            (same block as ResNet18, shortcut conv1x1(stride) + norm when shapes differ);
    head: mean over (H, W) -> Linear(256, num_classes).

    H and W must be divisible by 4.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 64):
        super().__init__()
        self.stem_conv = conv3x3(in_channels, 16)
        self.stem_norm = nn.BatchNorm2d(16)
        self.group1 = _stage(16, 64, 2, 1)
        self.group2 = _stage(64, 128, 2, 2)
        self.group3 = _stage(128, 256, 2, 2)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(self.stem_norm(self.stem_conv(x)))
        x = self.group3(self.group2(self.group1(x)))
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- token models


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches flattened in (C, kh, kw) order, Linear(C*p*p, D),
    plus a learnable positional table of shape (1, S, D), init N(0, 0.02^2).

    (B, C, H, W) -> (B, S, D) with S = (H / p) * (W / p).
    """

    def __init__(self, in_channels: int, image_size: int, patch: int, dim: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch}")
        self.patch = patch
        self.num_patches = (image_size // patch) ** 2
        self.proj = nn.Linear(in_channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * POS_ENC_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, S, C*p*p)
        return self.proj(x) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention: one fused Linear(D, 3*H*Dh) for Q, K, V of all heads
    (same parameter count as 3*H separate Linear(D, Dh)), scores Q K^T / sqrt(Dh),
    softmax over keys, times V, heads concatenated (S, H*Dh) -> Linear(H*Dh, D)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, S, Dh)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        return self.out(y.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class ViTLayer(nn.Module):
    """Post-norm encoder layer: x = norm(x + attn(x)); x = norm(x + mlp(x)),
    mlp = Linear(D, D) -> relu -> Linear(D, D)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn = Attention(dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.fc2(relu(self.fc1(x))))


class ViT(nn.Module):
    """Vision transformer.

    patch embedding (4 x 4 patches, width 512) + positional table;
    4 post-norm layers, attention with 4 heads of dim 64, MLP width 512;
    head: mean over S -> Linear(512, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 64,
                 patch: int = 4, dim: int = 512, depth: int = 4, heads: int = 4,
                 head_dim: int = 64):
        super().__init__()
        self.embed = PatchEmbed(in_channels, image_size, patch, dim)
        self.layers = nn.Sequential(*[ViTLayer(dim, heads, head_dim) for _ in range(depth)])
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(x))
        return self.fc(x.mean(dim=1))


class MixerLayer(nn.Module):
    """Pre-norm mixer layer: x = x + token_mix(norm(x)); x = x + channel_mix(norm(x)).

    token_mix:   transpose to (B, D, S) -> Linear(S, 4S) -> relu -> Linear(4S, S) -> transpose back;
    channel_mix: Linear(D, D/2) -> relu -> Linear(D/2, D).
    """

    def __init__(self, seq: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token1 = nn.Linear(seq, token_hidden)
        self.token2 = nn.Linear(token_hidden, seq)
        self.norm2 = nn.LayerNorm(dim)
        self.channel1 = nn.Linear(dim, channel_hidden)
        self.channel2 = nn.Linear(channel_hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x).transpose(1, 2)  # (B, D, S)
        x = x + self.token2(relu(self.token1(y))).transpose(1, 2)
        return x + self.channel2(relu(self.channel1(self.norm2(x))))


class MLPMixer(nn.Module):
    """MLP-Mixer.

    patch embedding (4 x 4 patches, width 512) + positional table;
    8 mixer layers, token MLP S -> 4S -> S, channel MLP 512 -> 256 -> 512;
    head: mean over S -> Linear(512, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 64,
                 patch: int = 4, dim: int = 512, depth: int = 8):
        super().__init__()
        self.embed = PatchEmbed(in_channels, image_size, patch, dim)
        s = self.embed.num_patches
        self.layers = nn.Sequential(*[MixerLayer(s, dim, 4 * s, dim // 2) for _ in range(depth)])
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(x))
        return self.fc(x.mean(dim=1))


MODELS = {"resnet18": ResNet18, "wrn16_4": WRN16_4, "vit": ViT, "mixer": MLPMixer}


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for name, cls in MODELS.items():
        model = cls(num_classes=10, in_channels=3, image_size=64)
        out = model(x)
        assert out.shape == (2, 10), (name, out.shape)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name
        print(f"{name:10s} params={param_count(model):>11,d}  out={tuple(out.shape)}  fwd+bwd ok")
