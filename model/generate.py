"""Cached sampling: prefill the prompt once, then one cheap step per patch.

For MegaByte the global model runs once per patch and the local model once per
byte; neither recomputes the past. Works for any model with `prefill`, `decode_one`,
`patch_step`, `context` and `patch_size` (see model.megabyte). The request's state
lives here, in local variables, so one model serves many generations at once.

One explicit `Decoder` per model says how it decodes: its weights' dtype, the fused C++ step
(drawing the bytes in C++ too where the rules allow) or torch's layers, and a compiled patch
step per batch bucket once it has compiled them (eager until then). `stream_bytes` takes the
decoder; nothing module-wide switches the path.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import fused_step, hardware
from .megabyte import compile_decoding
from .recall import Recaller
from .sampling import Sampling, rules_outside_cxx, sample

# Generation runs at one of these batch sizes, the samples padded up to it, so that a few
# compiled steps serve every request (and the same seed gives the same bytes either way).
BATCH_BUCKETS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Steer:
    """Best-of a chunk at a time within one generation: after every `every` new bytes, and after
    the last, `choose` gets the chunk each row drew since its last choice, (B, m) uint8, and
    returns for each row the row it goes on from, whose chunk it takes and whose state it copies
    (a row chosen goes on from itself). Nothing is drawn or prefilled twice."""

    every: int
    choose: Callable[[np.ndarray], np.ndarray]


def slide_window(model) -> int:
    """How many bytes generation keeps when the sequence reaches the model's context:
    the most recent half of the context, rounded down to whole patches."""
    return model.context // 2 // model.patch_size * model.patch_size


@torch.no_grad()
def generate_stream(
    model,
    prompt: bytes,
    max_new_bytes: int,
    samples: int = 1,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    patch_step: Callable | None = None,
    fused: bool = False,
    steer: Steer | None = None,
) -> Iterator[np.ndarray]:
    """Yields uint8 arrays (samples, m) of new bytes, a patch at a time (single bytes
    until the first patch boundary).

    All samples continue the same prompt in one batch. The same seed gives the same bytes.
    Whole patches go through `patch_step` (`model.patch_step`, or the compiled one from
    `compile_decoding`, which gives the same bytes, made with fused_sampling as here);
    `fused`: the model's steps over one position as one C++ call each (model.fused_step, built
    by the caller), and the draws in C++ too where `sampling` has only the rules it has
    (sampling.CXX_RULES): one uniform number per byte either way; the bytes that finish a
    partial patch, the last ones asked for and the last patch before the context is full
    go byte by byte. When the sequence reaches the model's context, the window slides: the
    last `slide_window(model)` bytes (half the context, whole patches) are prefilled again
    and generation goes on from them; anything earlier is no longer seen.

    A model with recall (model.recall) copies a patch at a time: where recall has an occurrence
    to follow, the patch that followed it is copied with the probability that recall's order is
    right (its weight in scoring), and drawn by the neural model otherwise; the place in the
    occurrence is kept past a drawn patch (Recaller.continuation), so a tune goes on as it went
    before instead of ending at the first patch the model draws. Measured in bench.samplers.
    The coin flips come from a generator of their own, so they never shift the bytes' uniforms.

    With `steer` (Steer), the rows go on from the ones it chooses, a chunk at a time, and each
    chunk is yielded once chosen, each row's the chunk it goes on from; while a chunk is drawn,
    an empty array (samples, 0) each step, so that a caller (the app's Stop) never waits a chunk.
    """
    if max_new_bytes < 0:
        raise ValueError("the number of bytes to generate cannot be negative.")
    if samples < 1:
        raise ValueError("at least one sample must be asked for.")
    if steer and steer.every < 1:
        raise ValueError("a steered chunk must hold at least one byte.")
    device = next(model.parameters()).device
    p = model.patch_size
    generator = torch.Generator(device=device).manual_seed(seed)
    knobs = sampling.knobs(device)
    history = torch.tensor(list(prompt), dtype=torch.long, device=device)[None].expand(samples, -1)
    if history.shape[1] >= model.context:
        history = history[:, -slide_window(model) :]
    orders = getattr(model.config, "recall", ())
    recallers = []
    if orders:  # recall remembers the whole prompt, even where it is longer than the model's context
        recallers = [Recaller(orders)]
        recallers[0].extend(prompt)
        recallers += [copy.deepcopy(recallers[0]) for _ in range(samples - 1)]
    coins = torch.Generator().manual_seed(seed + 1)
    fused_sampling = fused and not rules_outside_cxx(sampling)
    draw = fused_step.sample if fused_sampling else sample
    patch_step = patch_step or functools.partial(model.patch_step, fused=fused, fused_sampling=fused_sampling)
    # every sample continues the same prompt: prefill it once and copy its state to each
    logits, state = repeat_rows(model.prefill(history[:1], fused), samples)
    length, made, recent, chunk = history.shape[1], 0, [], []
    while made < max_new_bytes:
        whole_patch = length % p == 0 and length + p < model.context and made + p <= max_new_bytes
        uniform = torch.rand(samples, p if whole_patch else 1, generator=generator, device=device)
        forced = recalled(recallers, p if whole_patch else 1, coins).to(device) if recallers else None
        if whole_patch:
            new, logits, state = patch_step(logits, state, uniform, knobs, forced=forced)
        else:
            new = draw(logits, knobs, uniform[:, 0])[:, None]
            if forced is not None:
                new = torch.where(forced >= 0, forced, new)
        for recaller, row in zip(recallers, new.tolist()):
            recaller.extend(row)
        made += new.shape[1]
        recent.append(new)
        if not steer:
            yield new.to("cpu", torch.uint8).numpy()
        else:
            chunk.append(new.to("cpu", torch.uint8).numpy())
            if sum(part.shape[1] for part in chunk) >= steer.every or made == max_new_bytes:
                drawn = np.concatenate(chunk, axis=1)
                rows = steer.choose(drawn)
                logits, history, recent = go_on_from(rows, logits, state, history, recent, recallers)
                chunk = []
                yield drawn[rows]
            else:  # nothing chosen yet, but the caller gets a place to stop (or check a budget) each patch
                yield np.empty((samples, 0), np.uint8)
        if made == max_new_bytes:
            break
        if whole_patch:
            length += p
        elif length + 1 >= model.context:
            history = torch.cat([history, *recent], 1)[:, -slide_window(model) :]
            recent = []
            logits, state = model.prefill(history, fused)
            length = history.shape[1]
        else:
            logits, state = model.decode_one(new[:, 0], state, fused)
            length += 1


def repeat_rows(value, samples: int):
    """`value` (tensors with a batch of one, nested in tuples, named tuples and lists) with each
    tensor's one row repeated `samples` times; scalars as they are."""
    if isinstance(value, torch.Tensor):
        return value.repeat(samples, *(1,) * (value.dim() - 1)) if value.dim() else value
    if hasattr(value, "_fields"):
        return type(value)(*(repeat_rows(item, samples) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(repeat_rows(item, samples) for item in value)
    return value


def go_on_from(rows: np.ndarray, logits: torch.Tensor, state, history: torch.Tensor, recent: list,
               recallers: list[Recaller]):
    """Steer's move: row i goes on from row rows[i] (whose own is itself). The state's tensors
    (caches included, nested in tuples and lists) are copied row by row in place, where the
    steps write them; the rest is returned re-indexed."""
    rows = np.asarray(rows)
    if rows.shape != (len(logits),) or (rows[rows] != rows).any():
        raise ValueError("steering must send each row to a row that goes on from itself.")
    moves = [(row, int(source)) for row, source in enumerate(rows) if source != row]

    def copy_rows(value):
        if isinstance(value, torch.Tensor) and value.dim():
            for row, source in moves:
                value[row].copy_(value[source])
        elif isinstance(value, (tuple, list)):
            for item in value:
                copy_rows(item)

    copy_rows(state)
    for row, source in moves if recallers else ():
        recallers[row] = copy.deepcopy(recallers[source])
    index = torch.as_tensor(rows, device=logits.device)
    return logits[index], history[index], [part[index] for part in recent]


def recalled(recallers: list[Recaller], size: int, coins: torch.Generator) -> torch.Tensor:
    """(B, size): for each sample, the `size` bytes its recall copies (Recaller.continuation),
    with the probability its order is right, else -1s (drawn by the model). One coin per sample,
    whether it copies or not."""
    forced = torch.full((len(recallers), size), -1)
    for s, (recaller, coin) in enumerate(zip(recallers, torch.rand(len(recallers), generator=coins).tolist())):
        copied, weight = recaller.continuation(size)
        if coin < weight:
            forced[s] = torch.tensor(list(copied))
    return forced


def generate(model, prompt: bytes, max_new_bytes: int, samples: int = 1,
             sampling: Sampling = Sampling(), seed: int = 0,
             progress: Callable[[int], None] | None = None, patch_step: Callable | None = None,
             fused: bool = False, steer: Steer | None = None) -> list[bytes]:
    """The prompt's continuations, one `bytes` of max_new_bytes per sample."""
    parts = []
    for part in generate_stream(model, prompt, max_new_bytes, samples, sampling, seed, patch_step, fused, steer):
        parts.append(part)
        if progress:
            progress(sum(p.shape[1] for p in parts))
    if not parts:
        return [b""] * samples
    out = np.concatenate(parts, axis=1)
    return [row.tobytes() for row in out]


@dataclass
class GenerationStatus:
    """How a generation is running: the decoder's own words for its path (Decoder.describe),
    and the new bytes per second so far, all samples counted."""

    path: str = "eager"
    bytes_per_second: float = 0.0


def bucket_for(samples: int) -> int:
    """The smallest batch bucket that holds `samples`."""
    if samples > BATCH_BUCKETS[-1]:
        raise ValueError(f"at most {BATCH_BUCKETS[-1]} samples can be generated at once.")
    return next(bucket for bucket in BATCH_BUCKETS if bucket >= samples)


class Decoder:
    """How one model decodes, chosen once and said aloud (gpt-fast's generate as an object):
    the model's weights and caches in `dtype`; the fused C++ step (model.fused_step) or torch's
    layers (`fused`; None: the fused step where it builds here), the fused one drawing the bytes
    in C++ for the rules it has (sampling.CXX_RULES) and in torch, eagerly, for the others; a
    compiled patch step for each batch bucket that `compile` has made, eager for the others.
    The same decoder and seed give the same bytes, compiled or eager, in fp32 and on the fused
    step; in bf16 on torch's layers inductor keeps in fp32 what eager rounds to bf16, so there
    the bytes may change once compiled. Another dtype or path gives other bytes: describe()
    says which ran."""

    def __init__(self, model, dtype: torch.dtype = torch.float32, fused: bool | None = None):
        built = fused_step.build() if fused is not False else False
        if fused and not built:
            raise ValueError("the fused decoding step cannot be built here; use fused=False.")
        self.fused = built
        self.dtype = dtype
        self.model = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
        self.steps: dict[int, Callable] = {}

    @classmethod
    def fastest(cls, model, batch: int = 1) -> "Decoder":
        """The fused step where it builds, in the dtype measured to decode `model` faster at
        `batch` samples here (model.hardware.decoding_dtype); describe() says which."""
        fused = fused_step.build()
        return cls(model, hardware.decoding_dtype(model, batch, fused), fused)

    def compile(self, buckets=BATCH_BUCKETS):
        """Compiles the patch step for each batch bucket, running each once (which compiles
        it); stream_bytes takes each as soon as it is ready."""
        # every (model, dtype, bucket) is one compiled graph of the same function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for bucket in buckets:
            step = compile_decoding(self.model, self.fused, fused_sampling=self.fused)
            # a prompt of one whole patch: the first call of the step compiles it
            generate(self.model, bytes(self.model.patch_size), self.model.patch_size, bucket, patch_step=step,
                     fused=self.fused)
            self.steps[bucket] = step

    def step_for(self, samples: int, sampling: Sampling = Sampling()) -> Callable | None:
        """The compiled step a request takes, or None: eager. A fused decoder's steps draw in
        C++, so a rule the C++ sampler lacks runs eagerly, drawn in torch."""
        if self.fused and rules_outside_cxx(sampling):
            return None
        return self.steps.get(bucket_for(samples))

    def describe(self, samples: int = 1, sampling: Sampling = Sampling()) -> str:
        """The path a request of `samples` drawn by `sampling` takes, in words: "compiled,
        fused C++ step, sampling in C++, float32"."""
        how = "compiled" if self.step_for(samples, sampling) else "eager"
        layers = "fused C++ step" if self.fused else "torch's layers"
        if not self.fused:
            draws = "sampling in torch"
        elif outside := rules_outside_cxx(sampling):
            draws = f"sampling in torch ({', '.join(outside)} not in C++)"
        else:
            draws = "sampling in C++"
        return f"{how}, {layers}, {draws}, {str(self.dtype).removeprefix('torch.')}"


def stream_bytes(decoder: Decoder, prompt: bytes, new_bytes: int, samples: int, sampling: Sampling = Sampling(),
                 seed: int = 0, status: GenerationStatus | None = None) -> Iterator[np.ndarray]:
    """Yields the new bytes (samples, m) as they are made, the samples padded to their batch
    bucket, on the decoder's compiled step for that bucket when it has one, eagerly until
    then; `status` says which, and how fast. Holds no lock: the decoding state is this
    request's own."""
    status = status or GenerationStatus()
    bucket = bucket_for(samples)
    status.path = decoder.describe(samples, sampling)
    start, made = time.perf_counter(), 0
    for part in generate_stream(decoder.model, prompt, new_bytes, bucket, sampling, seed,
                                patch_step=decoder.step_for(samples, sampling), fused=decoder.fused):
        made += part.shape[1]
        status.bytes_per_second = samples * made / (time.perf_counter() - start)
        yield part[:samples]
