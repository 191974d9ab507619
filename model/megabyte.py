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
from .sampling import sample


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
        self.decode_patch_step = self.patch_step  # compile_decoding swaps in a compiled one

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

    def forward(self, x: torch.Tensor, predict_from: int = 0) -> torch.Tensor:
        """Logits (B, T - predict_from, 256) for bytes predict_from.. (a multiple of P).
        The global model reads all of x; the local model runs only where predictions are
        asked for, which scoring with overlapping windows uses to skip the context half."""
        b, t = x.shape
        p, d_local = self.patch_size, self.config.local_dim
        if t % p or t > self.context or predict_from % p:
            raise ValueError(f"input length {t} and predict_from {predict_from} must be multiples of {p}, "
                             f"and the length at most {self.context}.")
        first, k = predict_from // p, t // p
        patches = self.embed_patches(x)
        global_in = torch.cat([self.global_pad.expand(b, 1, -1), patches[:, :-1]], dim=1)
        from_global = self.split_global(self.global_model(global_in)[:, first:])
        local_in = self.local_embed(x.long()).reshape(b, k, p, d_local)[:, first:]
        local_in = torch.cat([self.local_pad.expand(b, k - first, 1, d_local), local_in[:, :, :-1]], dim=2)
        h = self.local_model((local_in + from_global).reshape(b * (k - first), p, d_local))
        return self.head(h).reshape(b, t - predict_from, 256)

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

    def open_patch(self, patch: torch.Tensor, position: torch.Tensor):
        """A finished patch (B, P) at global cache `position` (a (1,) tensor; 0 is the pad)
        -> the next patch's local inputs (B, P, D_L) and the logits of its first byte."""
        start = (position - 1) * self.patch_size
        from_global = self.global_step(self.embed_patches(patch, start), position)
        first = self.local_pad.expand(patch.shape[0], 1, -1) + from_global[:, None, 0]
        return from_global, self.local_step(first, torch.zeros_like(position))

    def next_in_patch(self, byte: torch.Tensor, from_global: torch.Tensor, inside: int) -> torch.Tensor:
        """The byte (B,) before position `inside` of the patch -> the logits of the byte there."""
        local_in = self.local_embed(byte.long())[:, None] + from_global[:, None, inside]
        return self.local_step(local_in, torch.tensor([inside], device=byte.device))

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
        if inside == p - 1:  # the patch is complete: one global step opens the next patch
            position = torch.tensor([self._length // p], device=byte.device)
            self._from_global, logits = self.open_patch(self._patch, position)
            return logits
        return self.next_in_patch(byte, self._from_global, inside + 1)

    def decode_patch(self, logits: torch.Tensor, uniform: torch.Tensor, knobs: torch.Tensor):
        """Samples the whole patch that starts here, at a patch boundary (see `patch_step`).
        `uniform` (B, P, 256) is its randomness. Returns the patch (B, P) and the next logits."""
        if self._length % self.patch_size:
            raise ValueError("decode_patch starts at a patch boundary; finish the patch with decode_one.")
        position = torch.tensor([self._length // self.patch_size + 1], device=logits.device)
        patch, self._from_global, logits = self.decode_patch_step(
            logits, self._from_global, position, uniform, knobs)
        self._length += self.patch_size
        return patch, logits

    def patch_step(self, logits, from_global, position, uniform, knobs):
        """The hot step of generation, a function of tensors only (compile_decoding compiles it):
        P local steps, each sampling a byte, then one global step over the finished patch.
        Python runs once per patch instead of once per byte."""
        chosen = []
        for inside in range(self.patch_size):
            chosen.append(sample(logits, knobs, uniform[:, inside]))
            if inside + 1 < self.patch_size:
                logits = self.next_in_patch(chosen[-1], from_global, inside + 1)
        patch = torch.stack(chosen, 1)
        from_global, logits = self.open_patch(patch, position)
        return patch, from_global, logits


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
        self.decode_patch_step = self.patch_step  # compile_decoding swaps in a compiled one

    def embed(self, x: torch.Tensor, start: int | torch.Tensor, with_start: bool) -> torch.Tensor:
        """Input embeddings at positions start..: the start token first if asked, then bytes."""
        h = self.byte_embed(x.long())
        if with_start:
            h = torch.cat([self.start.expand(x.shape[0], 1, -1), h], dim=1)
        positions = torch.arange(h.shape[1], device=x.device) + start
        return h + self.position_embed(positions)

    def forward(self, x: torch.Tensor, predict_from: int = 0) -> torch.Tensor:
        if x.shape[1] > self.context:
            raise ValueError(f"input length {x.shape[1]} is longer than the context {self.context}.")
        return self.head(self.transformer(self.embed(x[:, :-1], 0, with_start=True))[:, predict_from:])

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

    def feed(self, byte: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One byte (B,) at cache `position` -> the logits of the byte after it."""
        return self.step(self.embed(byte[:, None], position, with_start=False), position)

    def decode_one(self, byte: torch.Tensor) -> torch.Tensor:
        self._length += 1
        return self.feed(byte, torch.tensor([self._length], device=byte.device))

    def decode_patch(self, logits: torch.Tensor, uniform: torch.Tensor, knobs: torch.Tensor):
        """Samples one byte (a patch of this model) and steps past it; as MegaByte.decode_patch."""
        position = torch.tensor([self._length + 1], device=logits.device)
        byte, logits = self.decode_patch_step(logits, position, uniform, knobs)
        self._length += 1
        return byte, logits

    def patch_step(self, logits, position, uniform, knobs):
        byte = sample(logits, knobs, uniform[:, 0])
        return byte[:, None], self.feed(byte, position)


def compile_decoding(model: nn.Module) -> nn.Module:
    """Compiles the hot step of generation, `patch_step`, with torch.compile.

    The prompt's prefill and the byte steps that finish a partial patch stay eager, so
    prompts of any length do not recompile. The first generation at each batch size pays
    the compile time (one to two minutes on a 2-core CPU).

    Two options cut the per-call cost, which dominates decoding at small batches: a C++
    wrapper around the kernels instead of a Python one, and no guards on the model's own
    parameters and buffers (about 0.6 ms per call here). The second is safe because the
    compiled step belongs to this model, whose weights are never swapped in place, and the
    cache shapes follow the batch size of `logits`, which is still guarded."""
    options = {"cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    model.decode_patch_step = torch.compile(model.patch_step, dynamic=False, options=options)
    return model


def build_model(config: MegaByteConfig | FlatConfig) -> nn.Module:
    return {"megabyte": MegaByte, "flat": FlatTransformer}[config.kind](config)
