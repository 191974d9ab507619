"""MegaByte (Yu et al. 2023): a global transformer over patches, a local one inside each patch.

Both models here map bytes x[0..T) to logits[0..T), where logits[t] is the
prediction of x[t] from x[0..t): the shift happens inside the model. Both also
decode with KV caches through `prefill` (a prompt in one pass) and `decode_one`
(one byte in, the next byte's logits out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlatConfig, MegaByteConfig
from .layers import Transformer, init_weights


def next_byte_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats over all 256 byte values; byte 0 counts like any other."""
    return F.cross_entropy(logits.float().reshape(-1, 256), x.reshape(-1).long())


class MegaByte(nn.Module):
    def __init__(self, config: MegaByteConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_size = c.patch_size
        self.context = c.max_bytes
        self.byte_embed = nn.Embedding(256, c.byte_dim)
        self.position_embed = nn.Embedding(c.max_bytes, c.byte_dim)
        self.global_pad = nn.Parameter(torch.zeros(c.global_dim))
        self.global_model = Transformer(c.global_dim, c.global_layers, c.global_heads, c.mlp_ratio)
        self.global_to_local = nn.Linear(c.byte_dim, c.local_dim)
        self.local_embed = nn.Embedding(256, c.local_dim)
        self.local_pad = nn.Parameter(torch.zeros(c.local_dim))
        self.local_model = Transformer(c.local_dim, c.local_layers, c.local_heads, c.mlp_ratio)
        self.head = nn.Linear(c.local_dim, 256)
        init_weights(self)
        nn.init.normal_(self.global_pad, std=0.02)
        nn.init.normal_(self.local_pad, std=0.02)
        # decode_one's two steps; compile_decoding swaps in compiled versions
        self.decode_global, self.decode_local = self.global_step, self.local_step

    def embed_patches(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Bytes (B, k·P) at absolute positions start.. -> patch embeddings (B, k, P·D_G)."""
        b, t = x.shape
        positions = torch.arange(t, device=x.device) + start
        h = self.byte_embed(x.long()) + self.position_embed(positions)
        return h.reshape(b, t // self.patch_size, self.config.global_dim)

    def split_global(self, g: torch.Tensor) -> torch.Tensor:
        """Global outputs (B, k, P·D_G) -> per-byte local inputs (B, k, P, D_L)."""
        b, k, _ = g.shape
        return self.global_to_local(g.reshape(b, k, self.patch_size, self.config.byte_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        p, d_local = self.patch_size, self.config.local_dim
        if t % p or t > self.context:
            raise ValueError(f"input length {t} must be a multiple of {p} and at most {self.context}.")
        k = t // p
        patches = self.embed_patches(x)
        global_in = torch.cat([self.global_pad.expand(b, 1, -1), patches[:, :-1]], dim=1)
        from_global = self.split_global(self.global_model(global_in))
        local_in = self.local_embed(x.long()).reshape(b, k, p, d_local)
        local_in = torch.cat([self.local_pad.expand(b, k, 1, d_local), local_in[:, :, :-1]], dim=2)
        h = self.local_model((local_in + from_global).reshape(b * k, p, d_local))
        return self.head(h).reshape(b, t, 256)

    # Cached decoding: the global model runs once per patch, the local model once per byte.

    def setup_cache(self, batch: int, dtype=torch.float32):
        self.global_model.setup_cache(batch, self.context // self.patch_size, dtype)
        self.local_model.setup_cache(batch, self.patch_size, dtype)

    def clear_cache(self):
        self.global_model.clear_cache()
        self.local_model.clear_cache()

    def global_step(self, global_in: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Global inputs at cache `positions` -> local inputs for the patch after the last one."""
        return self.split_global(self.global_model(global_in, positions)[:, -1:])[:, 0]

    def local_step(self, local_in: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Local inputs at cache `positions` inside the patch -> logits of the next byte."""
        return self.head(self.local_model(local_in, positions)[:, -1])

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Runs a prompt (B, n), n < context, through both caches; returns logits of byte n."""
        b, n = x.shape
        p = self.patch_size
        full = n // p * p
        global_in = torch.cat([self.global_pad.expand(b, 1, -1), self.embed_patches(x[:, :full])], 1)
        self._from_global = self.global_step(global_in, torch.arange(full // p + 1, device=x.device))
        self._patch = torch.zeros(b, p, dtype=torch.long, device=x.device)
        self._patch[:, : n - full] = x[:, full:]
        self._length = n
        local_in = torch.cat([self.local_pad.expand(b, 1, -1), self.local_embed(x[:, full:].long())], 1)
        local_in = local_in + self._from_global[:, : n - full + 1]
        return self.local_step(local_in, torch.arange(n - full + 1, device=x.device))

    def decode_one(self, byte: torch.Tensor) -> torch.Tensor:
        """Appends one byte (B,) to the cached sequence; returns the logits of the byte after it."""
        p = self.patch_size
        inside = self._length % p
        self._patch[:, inside] = byte
        self._length += 1
        device = byte.device
        if inside == p - 1:  # the patch is complete: one global step opens the next patch
            global_in = self.embed_patches(self._patch, self._length - p)
            patch_index = torch.tensor([self._length // p], device=device)
            self._from_global = self.decode_global(global_in, patch_index)
            local_in = self.local_pad.expand(byte.shape[0], 1, -1)
            position = torch.zeros(1, dtype=torch.long, device=device)
            return self.decode_local(local_in + self._from_global[:, None, 0], position)
        local_in = self.local_embed(byte.long())[:, None] + self._from_global[:, None, inside + 1]
        return self.decode_local(local_in, torch.tensor([inside + 1], device=device))


class FlatTransformer(nn.Module):
    """A plain byte-level decoder on the same layers, the baseline of the paper."""

    def __init__(self, config: FlatConfig):
        super().__init__()
        self.config = config
        self.patch_size = 1
        self.context = config.max_bytes
        self.byte_embed = nn.Embedding(256, config.dim)
        self.position_embed = nn.Embedding(config.max_bytes, config.dim)
        self.start = nn.Parameter(torch.zeros(config.dim))
        self.transformer = Transformer(config.dim, config.layers, config.heads, config.mlp_ratio)
        self.head = nn.Linear(config.dim, 256)
        init_weights(self)
        nn.init.normal_(self.start, std=0.02)
        self.decode_step = self.step  # compile_decoding swaps in a compiled version

    def embed(self, x: torch.Tensor, start: int, with_start: bool) -> torch.Tensor:
        """Input embeddings at positions start..: the start token first if asked, then bytes."""
        h = self.byte_embed(x.long())
        if with_start:
            h = torch.cat([self.start.expand(x.shape[0], 1, -1), h], dim=1)
        positions = torch.arange(h.shape[1], device=x.device) + start
        return h + self.position_embed(positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.context:
            raise ValueError(f"input length {x.shape[1]} is longer than the context {self.context}.")
        return self.head(self.transformer(self.embed(x[:, :-1], 0, with_start=True)))

    def setup_cache(self, batch: int, dtype=torch.float32):
        self.transformer.setup_cache(batch, self.context, dtype)

    def clear_cache(self):
        self.transformer.clear_cache()

    def step(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(h, positions)[:, -1])

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        self._length = n
        return self.step(self.embed(x, 0, with_start=True), torch.arange(n + 1, device=x.device))

    def decode_one(self, byte: torch.Tensor) -> torch.Tensor:
        self._length += 1
        h = self.embed(byte[:, None], self._length, with_start=False)
        return self.decode_step(h, torch.tensor([self._length], device=byte.device))


def compile_decoding(model: nn.Module) -> nn.Module:
    """Compiles the per-byte decoding steps (the hot loop of generation) with torch.compile.

    The prompt's prefill stays eager, so prompts of any length do not recompile.
    The first generation after this pays the compile time (tens of seconds on a CPU)."""
    if isinstance(model, MegaByte):
        model.decode_global = torch.compile(model.global_step, dynamic=False)
        model.decode_local = torch.compile(model.local_step, dynamic=False)
    else:
        model.decode_step = torch.compile(model.step, dynamic=False)
    return model


def build_model(config: MegaByteConfig | FlatConfig) -> nn.Module:
    return {"megabyte": MegaByte, "flat": FlatTransformer}[config.kind](config)
