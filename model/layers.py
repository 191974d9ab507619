"""Pre-norm transformer layers, shared by MegaByte and the flat baseline.

A KV cache is not part of a layer: it belongs to one request. `Transformer.empty_cache`
makes one (a keys and a values buffer per block, allocated once), and `forward` takes it
and writes the new positions' keys and values into it in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_step

# On the CPU, explicit attention beats scaled_dot_product_attention on short queries:
# in the bf16 backward pass of the local model (queries of P bytes), and in decoding
# (one query against the whole cache: SDPA took ~250 us per call here). SDPA wins on long ones.
EXPLICIT_ATTENTION_MAX_QUERIES = 64


def attention(q, k, v, mask=None, causal=False):
    """softmax(q·kᵀ/√d)·v, with a boolean mask (True = may attend) or a causal one."""
    if q.shape[-2] > EXPLICIT_ATTENTION_MAX_QUERIES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


def rotary_frequencies(head_dim: int, device) -> torch.Tensor:
    """The rotary angle per position of each channel pair: 10000^(-i / (head_dim/2)), in fp32
    always (made here, not kept as a buffer that a bf16 copy of the model would round)."""
    half = head_dim // 2
    return 10000.0 ** (-torch.arange(half, dtype=torch.float32, device=device) / half)


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary positions (Su et al. 2021) on x (B, H, t, d) at `positions` (t,): each pair of
    channels (i, i + d/2) turned by the angle position * frequency_i, so q·k depends on the
    distance between two positions alone. In fp32, as the angles grow with the context."""
    angles = positions.float()[:, None] * rotary_frequencies(x.shape[-1], x.device)[None, :]
    cos, sin = angles.cos(), angles.sin()
    first, second = x.float().chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rotary: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rotary = rotary

    def forward(self, x, cache=None, positions=None, mask=None):
        """Causal self-attention over x; with a cache (keys, values), x sits at `positions`,
        is written there, and attends to the cached positions that `mask` allows."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            at = torch.arange(t, device=x.device) if positions is None else positions
            q, k = rotate(q, at), rotate(k, at)
        if cache is None:
            y = attention(q, k, v, causal=True)
        else:
            keys, values = cache
            keys.index_copy_(2, positions, k.to(keys.dtype))
            values.index_copy_(2, positions, v.to(values.dtype))
            y = attention(q, keys.to(q.dtype), values.to(q.dtype), mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(dim, ratio * dim)
        self.down = nn.Linear(ratio * dim, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, rotary: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, rotary)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cache=None, positions=None, mask=None):
        x = x + self.attn(self.norm1(x), cache, positions, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of causal pre-norm blocks with a final norm; `rotary`: rotary positions in
    every attention (the positions are then the cache's, or 0.. without a cache)."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: int, rotary: bool = False):
        super().__init__()
        self.dim, self.heads, self.rotary = dim, heads, rotary
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, rotary) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, cache=None, positions=None, fused=False):
        """x (B, t, D) -> (B, t, D). With a cache from `empty_cache`, x sits at `positions`
        (t of them) and sees every cached position up to its own. `fused`: one new position
        runs as one C++ call (model.fused_step), which the caller has built; a Decoder asks
        for it, lossless coding does not, as it needs the same floats from every build."""
        if fused and fused_step.fits(x, cache):
            return fused_step.transformer_step(self, x, positions, cache)
        mask = None
        if cache is not None:  # built once per call, shared by every block
            key_positions = torch.arange(cache[0][0].shape[2], device=x.device)
            mask = key_positions[None, :] <= positions[:, None]
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], positions, mask)
        return self.norm(x)

    def rotary_frequencies(self, device) -> torch.Tensor:
        return rotary_frequencies(self.dim // self.heads, device)

    def empty_cache(self, batch: int, max_len: int, dtype, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One request's keys and values for max_len positions: a (keys, values) pair per block."""
        shape = (batch, self.heads, max_len, self.dim // self.heads)
        return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in self.blocks]


def init_weights(module: nn.Module):
    """GPT-2's initialisation, residual projections scaled down by the depth of their stack."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for stack in module.modules():
        if isinstance(stack, Transformer):
            for block in stack.blocks:
                for proj in (block.attn.proj, block.mlp.down):
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * len(stack.blocks)))
