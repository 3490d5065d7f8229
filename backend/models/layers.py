"""Transformer building blocks shared by the skeleton generator and the skinning network."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierEmbedding(nn.Module):
    """Positions ``[..., 3]`` -> ``[..., 3 + 6 n_freq]``: raw xyz plus sin/cos at octave frequencies."""

    def __init__(self, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freq, dtype=torch.float32)) * math.pi,
                             persistent=False)

    @property
    def out_dim(self) -> int:
        return 3 + 6 * len(self.freqs)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        angles = xyz[..., None] * self.freqs  # [..., 3, F]
        return torch.cat([xyz, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class PointEmbedding(nn.Module):
    """Oriented points ``[..., 6]`` (xyz + unit normal) -> features ``[..., d]``."""

    def __init__(self, d_model: int, n_freq: int = 8):
        super().__init__()
        self.fourier = FourierEmbedding(n_freq)
        self.mlp = nn.Sequential(nn.Linear(self.fourier.out_dim + 3, d_model), nn.GELU(),
                                 nn.Linear(d_model, d_model))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.fourier(pts[..., :3]), pts[..., 3:6]], dim=-1))


class Attention(nn.Module):
    """Multi-head attention (self or cross) with an optional additive bias / boolean mask.

    Self-attention (``d_context=None`` and ``cross=False``) uses one fused q/k/v projection. ``mask``
    is a bool tensor broadcastable to ``[B, H, Lq, Lk]`` (True = may attend), ``bias`` a float tensor
    of the same broadcast shape added to the attention logits.
    """

    def __init__(self, d_model: int, n_heads: int, cross: bool = False, d_context: int | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.d_head, self.cross = n_heads, d_model // n_heads, cross
        if cross:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_context or d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, H, L, d_head]``."""
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.d_head).transpose(1, 2)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention queries, keys, values ``[B, H, L, d_head]`` of ``x [B, L, d]``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.split(q), self.split(k), self.split(v)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values ``[B, H, Lk, d_head]`` of a context ``[B, Lk, d_context]``."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Attention of split queries ``q [B, H, Lq, d_head]`` over keys/values; returns ``[B, Lq, d]``."""
        attn_mask = None
        if bias is not None and mask is not None:
            attn_mask = bias.masked_fill(~mask, float("-inf"))
        elif bias is not None:
            attn_mask = bias
        elif mask is not None:
            attn_mask = mask
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        B, H, Lq, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, Lq, H * Dh))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q, (k, v) = self.split(self.q(x)), self.project_kv(context)
        else:
            q, k, v = self.project_qkv(x)
        return self.attend(q, k, v, mask=mask, bias=bias, is_causal=is_causal)


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ratio * d_model), nn.GELU(),
                                 nn.Linear(ratio * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfBlock(nn.Module):
    """Pre-norm self-attention + MLP block (optionally with an attention bias/mask)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.norm2, self.mlp = nn.LayerNorm(d_model), MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, bias=bias)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries ``x`` attend to ``context``) + MLP block."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm_q, self.norm_c = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, cross=True)
        self.norm2, self.mlp = nn.LayerNorm(d_model), MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_c(context), mask=mask)
        return x + self.mlp(self.norm2(x))


class PerceiverEncoder(nn.Module):
    """Point cloud ``[B, N, 6]`` -> latent tokens ``[B, M, d]``.

    M learned latent queries cross-attend to the embedded points once, then ``n_layers`` self-attention
    blocks refine the latents (Perceiver-style; cost linear in N).
    """

    def __init__(self, d_model: int, n_heads: int, n_latents: int, n_layers: int,
                 n_freq: int = 8, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.embed = PointEmbedding(d_model, n_freq)
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        self.cross = CrossBlock(d_model, n_heads, mlp_ratio, dropout)
        self.layers = nn.ModuleList([SelfBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        feats = self.embed(pts)
        x = self.latents.unsqueeze(0).expand(pts.shape[0], -1, -1)
        x = self.cross(x, feats)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """GPT-style init: normal(0, 0.02) linear/embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
