"""MegaByte (Yu et al. 2023): a global transformer over patches, a local one inside each patch.

Both models here map bytes x[0..T) to logits[0..T), where logits[t] is the
prediction of x[t] from x[0..t): the shift happens inside the model. Both also
decode with KV caches, gpt-fast style: `prefill` runs a prompt and makes the request's
state (caches and length), and `decode_one` (one byte) and `patch_step` (a whole
patch, sampled; the hot step) take the state and return it. The model holds weights
only, so one model serves many requests at once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_step
from .config import FlatConfig, MegaByteConfig
from .layers import Transformer, init_weights
from .sampling import sample


def next_byte_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats over all 256 byte values; byte 0 counts like any other."""
    return F.cross_entropy(logits.float().reshape(-1, 256), x.reshape(-1).long())


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per block, see Transformer.empty_cache


class MegaByteState(NamedTuple):
    """One request's decoding state. Steps write the caches in place and return the state
    to go on from, so a state is used once."""

    global_cache: KVCache  # every patch position of the context (0 is the padding patch)
    local_cache: KVCache  # the P bytes of the current patch
    from_global: torch.Tensor  # (B, P, D_L): the global model's input to each byte of the current patch
    patch: torch.Tensor  # (B, P): the current patch's bytes so far
    length: torch.Tensor  # (): bytes in the sequence so far


class FlatState(NamedTuple):
    """One request's decoding state for the flat baseline, as MegaByteState."""

    cache: KVCache
    length: torch.Tensor


class MegaByte(nn.Module):
    def __init__(self, config: MegaByteConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_size = c.patch_size
        self.context = c.max_bytes
        self.byte_embed = nn.Embedding(256, c.byte_dim)
        # one vector per byte of the context, or (rotary) per place inside a patch
        self.rotary = c.positions == "rotary"
        self.position_embed = nn.Embedding(c.patch_size if self.rotary else c.max_bytes, c.byte_dim)
        self.global_pad = nn.Parameter(torch.zeros(c.global_dim))
        self.global_model = Transformer(c.global_dim, c.global_layers, c.global_heads, c.mlp_ratio, self.rotary)
        self.global_to_local = nn.Linear(c.byte_dim, c.local_dim)
        self.local_embed = nn.Embedding(256, c.local_dim)
        self.local_pad = nn.Parameter(torch.zeros(c.local_dim))
        self.local_model = Transformer(c.local_dim, c.local_layers, c.local_heads, c.mlp_ratio)
        self.head = nn.Linear(c.local_dim, 256)
        init_weights(self)
        nn.init.normal_(self.global_pad, std=0.02)
        nn.init.normal_(self.local_pad, std=0.02)
        # built once: the local cache positions of a patch's bytes, sliced by the decode steps
        self.register_buffer("byte_positions", torch.arange(c.patch_size), persistent=False)

    def embed_patches(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Bytes (B, k·P) at absolute positions start.. -> patch embeddings (B, k, P·D_G)."""
        b, t = x.shape
        positions = torch.arange(t, device=x.device)
        positions = positions % self.patch_size if self.rotary else positions + start  # start is a patch boundary
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

    def global_step(self, global_in: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    fused: bool = False) -> torch.Tensor:
        """Global inputs at cache `positions` -> local inputs (B, P, D_L) for the patch after
        the last one. `fused`: as Transformer.forward's."""
        return self.split_global(self.global_model(global_in, cache, positions, fused)[:, -1:])[:, 0]

    def local_step(self, local_in: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                   fused: bool = False) -> torch.Tensor:
        """Local inputs at cache `positions` inside the patch -> logits of the next byte."""
        if fused and fused_step.fits(local_in, cache):  # one byte: the local model and the head in one C++ call
            return fused_step.transformer_step(self.local_model, local_in, positions, cache, self.head)[:, 0]
        return self.head(self.local_model(local_in, cache, positions)[:, -1])

    def open_patch(self, patch: torch.Tensor, position: torch.Tensor, state: MegaByteState, fused: bool = False):
        """A finished patch (B, P) at global cache `position` (a (1,) tensor; 0 is the pad)
        -> the next patch's local inputs (B, P, D_L) and the logits of its first byte."""
        start = (position - 1) * self.patch_size
        from_global = self.global_step(self.embed_patches(patch, start), position, state.global_cache, fused)
        first = self.local_pad + from_global[:, :1]
        return from_global, self.local_step(first, self.byte_positions[:1], state.local_cache, fused)

    def next_in_patch(self, byte: torch.Tensor, from_global: torch.Tensor, inside: int, cache: KVCache,
                      fused: bool = False):
        """The byte (B,) before position `inside` of the patch -> the logits of the byte there."""
        local_in = self.local_embed(byte.long())[:, None] + from_global[:, inside : inside + 1]
        return self.local_step(local_in, self.byte_positions[inside : inside + 1], cache, fused)

    # `fused` in the decoding steps: each transformer's step over one position as one C++ call
    # (model.fused_step), which the caller (a model.generate.Decoder) has built.

    def prefill(self, x: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, MegaByteState]:
        """Runs a prompt (B, n), n < context, through fresh caches -> (logits of byte n, state)."""
        b, n = x.shape
        p, device, dtype = self.patch_size, x.device, self.head.weight.dtype
        full = n // p * p
        global_cache = self.global_model.empty_cache(b, self.context // p, dtype, device)
        local_cache = self.local_model.empty_cache(b, p, dtype, device)
        global_in = torch.cat([self.global_pad.expand(b, 1, -1), self.embed_patches(x[:, :full])], 1)
        from_global = self.global_step(global_in, torch.arange(full // p + 1, device=device), global_cache, fused)
        patch = torch.zeros(b, p, dtype=torch.long, device=device)
        patch[:, : n - full] = x[:, full:]
        local_in = torch.cat([self.local_pad.expand(b, 1, -1), self.local_embed(x[:, full:].long())], 1)
        logits = self.local_step(local_in + from_global[:, : n - full + 1], self.byte_positions[: n - full + 1],
                                 local_cache, fused)
        return logits, MegaByteState(global_cache, local_cache, from_global, patch, torch.tensor(n, device=device))

    def decode_one(self, byte: torch.Tensor, state: MegaByteState, fused: bool = False) -> tuple[torch.Tensor, MegaByteState]:
        """Appends one byte (B,) -> (logits of the byte after it, state)."""
        p = self.patch_size
        inside = int(state.length) % p
        state.patch[:, inside] = byte
        length = state.length + 1
        if inside == p - 1:  # the patch is complete: one global step opens the next patch
            from_global, logits = self.open_patch(state.patch, (length // p).reshape(1), state, fused)
            return logits, state._replace(from_global=from_global, length=length)
        return (self.next_in_patch(byte, state.from_global, inside + 1, state.local_cache, fused),
                state._replace(length=length))

    def patch_step(self, logits: torch.Tensor, state: MegaByteState, uniform: torch.Tensor, knobs: torch.Tensor,
                   fused: bool = False, fused_sampling: bool = False, forced: torch.Tensor | None = None):
        """The hot step of generation, at a patch boundary, a function of tensors only
        (compile_decoding compiles it): P local steps, each drawing a byte with its uniform
        number from `uniform` (B, P), then one global step over the finished patch. Python runs
        once per patch instead of once per byte. `fused_sampling`: the P local steps and their
        draws as one C++ call (model.fused_step.local_patch; the rules in sampling.CXX_RULES
        only). `forced` (B, P): the bytes that replace the drawn ones where not -1 (recalled
        patches, model.generate), whatever the local model drew there. -> (patch (B, P), next
        logits, state)."""
        if fused_sampling:
            patch = fused_step.local_patch(self, logits, state.from_global, state.local_cache, uniform, knobs)
            if forced is not None:
                patch = torch.where(forced >= 0, forced, patch)
        else:
            chosen = []
            for inside in range(self.patch_size):
                chosen.append(sample(logits, knobs, uniform[:, inside]))
                if forced is not None:
                    chosen[-1] = torch.where(forced[:, inside] >= 0, forced[:, inside], chosen[-1])
                if inside + 1 < self.patch_size:
                    logits = self.next_in_patch(chosen[-1], state.from_global, inside + 1, state.local_cache, fused)
            patch = torch.stack(chosen, 1)
        length = state.length + self.patch_size
        from_global, logits = self.open_patch(patch, (length // self.patch_size).reshape(1), state, fused)
        return patch, logits, state._replace(from_global=from_global, length=length)


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

    def step(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache, fused: bool = False) -> torch.Tensor:
        return self.head(self.transformer(h, cache, positions, fused)[:, -1])

    def prefill(self, x: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, FlatState]:
        b, n = x.shape
        cache = self.transformer.empty_cache(b, self.context, self.head.weight.dtype, x.device)
        logits = self.step(self.embed(x, 0, with_start=True), torch.arange(n + 1, device=x.device), cache, fused)
        return logits, FlatState(cache, torch.tensor(n, device=x.device))

    def decode_one(self, byte: torch.Tensor, state: FlatState, fused: bool = False) -> tuple[torch.Tensor, FlatState]:
        """One byte (B,) -> (the logits of the byte after it, state); a function of tensors only."""
        length = state.length + 1
        position = length.reshape(1)  # the start token sits at 0
        logits = self.step(self.embed(byte[:, None], position, with_start=False), position, state.cache, fused)
        return logits, state._replace(length=length)

    def patch_step(self, logits: torch.Tensor, state: FlatState, uniform: torch.Tensor, knobs: torch.Tensor,
                   fused: bool = False, fused_sampling: bool = False, forced: torch.Tensor | None = None):
        """Samples one byte (a patch of this model) and steps past it; as MegaByte.patch_step."""
        byte = (fused_step.sample if fused_sampling else sample)(logits, knobs, uniform[:, 0])
        if forced is not None:
            byte = torch.where(forced[:, 0] >= 0, forced[:, 0], byte)
        logits, state = self.decode_one(byte, state, fused)
        return byte[:, None], logits, state


def compile_decoding(model: nn.Module, fused: bool = False, fused_sampling: bool = False):
    """The hot step of generation, `model.patch_step` with `fused` and `fused_sampling` fixed,
    compiled with torch.compile; a Decoder (model.generate) holds it. It holds no state, so
    requests share it.

    With `fused`, each transformer's step over one position is one C++ call
    (model.fused_step, which the caller has built), which the graph calls as is; with
    `fused_sampling` too, so are the local model's steps and draws over a whole patch. The prompt's
    prefill and the byte steps that finish a partial patch stay eager, so prompts of any
    length do not recompile. Each batch size compiles once (one to two minutes on a 2-core
    CPU, seconds from a warm inductor cache) on its first call.

    Two options cut the per-call cost, which dominates decoding at small batches: a C++
    wrapper around the kernels instead of a Python one, and no guards on the model's own
    parameters and buffers (about 0.6 ms per call here). The second is safe because the
    weights are inputs of the graph, read from the model at each call and never swapped in
    place; the state's shapes and dtypes are still guarded."""
    options = {"cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    step = functools.partial(model.patch_step, fused=fused, fused_sampling=fused_sampling)
    return torch.compile(step, dynamic=False, options=options)


def build_model(config: MegaByteConfig | FlatConfig) -> nn.Module:
    return {"megabyte": MegaByte, "flat": FlatTransformer}[config.kind](config)
