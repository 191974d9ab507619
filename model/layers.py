"""Pre-norm transformer layers with a static KV cache, shared by MegaByte and the flat baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# On the CPU, explicit attention beats scaled_dot_product_attention on short queries:
# in the bf16 backward pass of the local model (queries of P bytes), and in decoding
# (one query against the whole cache: SDPA took ~250 us per call here). SDPA wins on long ones.
EXPLICIT_ATTENTION_MAX_QUERIES = 64


class KVCache(nn.Module):
    """Keys and values of past positions, in buffers allocated once."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v


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


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.cache: KVCache | None = None

    def forward(self, x, positions=None):
        """Causal self-attention over x; with a cache, x sits at `positions` and sees all before."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.cache is None:
            y = attention(q, k, v, causal=True)
        else:
            k, v = self.cache.update(positions, k, v)
            key_positions = torch.arange(k.shape[-2], device=x.device)
            mask = key_positions[None, :] <= positions[:, None]
            y = attention(q, k.to(q.dtype), v.to(q.dtype), mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(dim, ratio * dim)
        self.down = nn.Linear(ratio * dim, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, positions=None):
        x = x + self.attn(self.norm1(x), positions)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of causal pre-norm blocks with a final norm."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, positions=None):
        for block in self.blocks:
            x = block(x, positions)
        return self.norm(x)

    def setup_cache(self, batch: int, max_len: int, dtype=torch.float32):
        device = self.norm.weight.device
        for block in self.blocks:
            block.attn.cache = KVCache(batch, self.heads, max_len, self.dim // self.heads, dtype, device)

    def clear_cache(self):
        for block in self.blocks:
            block.attn.cache = None


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
