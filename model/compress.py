"""Lossless compression with the model: a range coder driven by its next-byte probabilities.

The .mbz container: MAGIC, a format-version byte, the header's length (4 bytes, little
endian), the header as JSON, then the range coder's payload. The header names everything
both ends must share to compute the same probabilities: the checkpoint's sha256, the
torch version, the CPU's ISA, the thread count, the number of segments and the
adaptation settings; plus the layout (opaque here), the length and a CRC-32 of the bytes.
A file is anyone's to edit: decompress takes no claim of its header on trust, and refuses
any that compress would not have written, or that asks for more than its caller allows,
before any work or memory that grows with it.

Why not score()'s windows: the decoder cannot run a window in one pass before it knows the
window's bytes, and a pass that computes only some positions differs from it in the last
bits. So both ends make the same calls, with the same shapes, in the same order, as
generation does: the input is cut into segments that go side by side as the rows of one
batch; the global model takes one cached step per patch, the local model one cached step per
byte. The encoder could run the local model over a whole patch at once, but a call of
another shape may round differently, so it steps a byte at a time like the decoder. The
global context slides like score()'s windows: each patch is predicted from half a window of
context or more.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import recall
from .hardware import isa
from .score import Scores

MAGIC = b"MBZ\x00"
FORMAT_VERSION = 2  # 2: cached local steps and more, shorter rows for short inputs (1 coded a patch at a time)
THREADS = 1  # torch threads while coding: the decoder must split the arithmetic the same way
FREQUENCY_BITS = 24  # each byte value gets floor(p·2^24) + 1: never zero, and within 2^-16 of p
# Rows side by side: one model call codes a byte of each, so more rows, fewer calls. But each
# row starts without context, and a row shorter than the context reads less of the past.
ROW_BYTES = 2048  # the shortest row
SHORT_ROWS = 8  # short inputs go as up to this many rows of ROW_BYTES or more, even under a context long
MAX_SEGMENTS = 64  # 64 rows coded 256 KB in 0.7x the time of 32; on 1 MB of text, 0.02% more bits
# Each row keeps the global model's KV cache of a whole context (about 1 KB a byte of context in
# the shipped shapes), so rows × context stays under this: a 10 MB claim on a 128 KB-context
# checkpoint allocates 8 rows' caches (1 GB), not 64 (8.6 GB). Inputs up to 1 MB are unaffected.
MAX_ROWS_CONTEXT = 1 << 20
TOP = 1 << 56  # the range coder keeps its range in [2^56, 2^64)
MASK = (1 << 64) - 1
HEADER_KEYS = {"checkpoint_sha256", "checkpoint", "layout", "length", "crc32", "payload_bytes",
               "segments", "threads", "torch", "isa", "adapt"}
HEADER_TYPES = {"checkpoint_sha256": str, "checkpoint": str, "layout": dict, "length": int, "crc32": int,
                "payload_bytes": int, "segments": int, "threads": int, "torch": str, "isa": str}
COUNTS = ("length", "payload_bytes", "segments", "threads")
# compress writes ~400 bytes; a checkpoint's name (a folder name, at most 255 bytes) takes at
# most 3 JSON characters per byte. A longer header is refused before it is parsed.
MAX_HEADER_BYTES = 4096
# What decompress decodes unless its caller allows more: ~30 minutes at ~5,500 bytes/s on one
# thread (bench/results/speed.md), and ~20 bytes of memory per byte.
MAX_LENGTH = 10_000_000
# How many bits a coded byte can cost. Its interval is at least 1 and at most 2^24 + 1 (a
# probability of 1, plus float32 rounding's few units) of a total at least 255 more (every
# other value gets at least 1) and under 2^24 + 2^9 (the 256 "+ 1"s and rounding): so a byte
# costs between log2(1 + 255 / (2^24 + 3)) > 2.19e-5 bits and log2(2^24 + 2^9) < 24.0001 bits,
# and the range's truncation to 64 bits adds under 2^-30.
MIN_BITS_PER_BYTE = 2e-5
MAX_BITS_PER_BYTE = FREQUENCY_BITS + 0.001


class CompressError(ValueError):
    """A .mbz file that cannot be decoded here; the message is one sentence."""


@dataclass(frozen=True)
class Adaptation:
    """Dynamic evaluation (Krause et al. 2018): each time the context slides, `steps` SGD
    steps at rate `lr` on the window just coded, loss on the bytes new since the last slide."""

    # chosen on 256 kB of validation text (SGD at 0.03/0.1/0.3, 1-2 steps; Adam was no better)
    steps: int = 2
    lr: float = 0.1


# The range coder: LZMA's, widened to 64 bits (Python's integers make that free), so the
# truncation of range // total costs under 2^-30 bits per byte.


class RangeEncoder:
    def __init__(self):
        self.low, self.range = 0, MASK
        self.cache, self.pending = 0, 1  # the byte held back for a carry, and how many bytes it stands for
        self.out = bytearray()

    def encode(self, start: int, size: int, total: int):
        r = self.range // total
        self.low += r * start
        self.range = r * size
        while self.range < TOP:
            self.range <<= 8
            self.shift_low()

    def shift_low(self):
        if self.low < 0xFF << 56 or self.low > MASK:  # no carry can reach the held-back bytes any more
            carry = self.low >> 64
            self.out.append((self.cache + carry) & 0xFF)
            self.out.extend([(0xFF + carry) & 0xFF] * (self.pending - 1))
            self.pending, self.cache = 0, (self.low >> 56) & 0xFF
        self.pending += 1
        self.low = (self.low << 8) & MASK

    def finish(self) -> bytes:
        for _ in range(9):
            self.shift_low()
        return bytes(self.out[1:])  # the first byte is always 0: the intervals nest inside [0, 2^64)


class RangeDecoder:
    def __init__(self, payload: bytes):
        self.payload, self.position = payload, 8
        self.code, self.range = int.from_bytes(payload[:8].ljust(8, b"\0"), "big"), MASK

    def target(self, total: int) -> int:
        """Where the code falls in [0, total): the symbol is the one whose interval holds it."""
        self.r = self.range // total
        return min(self.code // self.r, total - 1)

    def consume(self, start: int, size: int):
        self.code -= self.r * start
        self.range = self.r * size
        while self.range < TOP:
            if self.position >= len(self.payload):
                raise CompressError("The .mbz payload is corrupt: it ends before its bytes do.")
            self.code = ((self.code << 8) | self.payload[self.position]) & MASK
            self.position += 1
            self.range <<= 8


def cumulative_frequencies(logits: torch.Tensor, recalled: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """(..., 256) logits -> (..., 257) int64: the integer interval of byte b is [c[b], c[b+1]).
    `recalled`: recall's (predicted, weight), each (...), mixed in (model.recall.mix)."""
    probs = logits.float().softmax(-1)
    if recalled is not None:
        probs = recall.mix(probs, *recalled)
    frequencies = (probs * (1 << FREQUENCY_BITS)).floor().long() + 1
    return F.pad(frequencies.cumsum(-1), (1, 0)).cpu().numpy()


def planned_recall(model, rows: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Recall's (predicted, weight), each (S, L), for rows whose bytes are known (model.recall.plan
    on each row; -1 and 0 past its length), or None for a model without recall."""
    orders = model.config.recall
    if not orders:
        return None
    predicted, weight = torch.full(rows.shape, -1), torch.zeros(rows.shape)
    for s, length in enumerate(lengths.tolist()):
        row_predicted, row_weight = recall.plan(rows[s, :length].numpy().astype(np.uint8), orders)
        predicted[s, :length], weight[s, :length] = torch.from_numpy(row_predicted), torch.from_numpy(row_weight)
    return predicted, weight


def position_slice(recalled, position: int, m: int):
    """Recall's (predicted, weight) for positions position..position + m of every row, or None."""
    return None if recalled is None else tuple(a[:, position : position + m] for a in recalled)


# The model, a patch at a time, identical at both ends.


def global_prefill(model, x: torch.Tensor, cache) -> torch.Tensor:
    """Whole patches x (S, m·P) at the start of a fresh window -> the local inputs of patch m."""
    global_in = torch.cat([model.global_pad.expand(x.shape[0], 1, -1), model.embed_patches(x)], 1)
    return model.global_step(global_in, torch.arange(global_in.shape[1], device=x.device), cache)


def byte_logits(model, patch: torch.Tensor, j: int, from_global: torch.Tensor, cache) -> torch.Tensor:
    """The local model's cached step at byte j of the patch (S, P) -> logits (S, 256). It reads
    byte j - 1 of the patch; the earlier ones are in the cache from steps 0..j - 1."""
    if j == 0:
        local_in = model.local_pad + from_global[:, :1]
    else:
        local_in = model.local_embed(patch[:, j - 1 : j]) + from_global[:, j : j + 1]
    return model.local_step(local_in, model.byte_positions[j : j + 1], cache)


def adapt_model(model, window: torch.Tensor, new_from: int, lengths: torch.Tensor, start: int, adapt: Adaptation):
    """SGD steps on the rows' window (S, W), which starts at byte `start` of each row, loss on
    bytes new_from.. of the window that lie inside their row's length."""
    target = window[:, new_from:]
    positions = torch.arange(start + new_from, start + window.shape[1], device=window.device)
    inside = (positions[None] < lengths[:, None]).float().reshape(-1)
    if not inside.sum():
        return
    parameters = list(model.parameters())
    for _ in range(adapt.steps):
        with torch.enable_grad():
            logits = model(window, predict_from=new_from)
            losses = F.cross_entropy(logits.reshape(-1, 256), target.reshape(-1), reduction="none")
            grads = torch.autograd.grad((losses * inside).sum() / inside.sum(), parameters)
        for parameter, grad in zip(parameters, grads):
            parameter.sub_(adapt.lr * grad)


def filled(cache, n: int):
    """The cache's first n positions, as views (what a step writes lands in the cache): a step
    attends to those alone, not to the empty rest of the window."""
    return [(keys[:, :, :n], values[:, :, :n]) for keys, values in cache]


@torch.no_grad()
def walk(model, rows: torch.Tensor, lengths: torch.Tensor, visit: Callable, known: bool,
         adapt: Adaptation | None, progress: Callable[[int, int], None] | None):
    """Runs the model over the rows (S, L), L a multiple of P, in lockstep: a global step per
    patch, a local step per byte. visit(logits (S, m, 256), position) returns the rows' bytes
    (S, m) at position.., which are written into `rows`. With `known`, the rows already hold
    every byte, so visit is called once per patch (m = P); else once per byte (m = 1), as the
    decoder learns them. The model's calls are the same either way, and so are the logits;
    visit takes them in order of position, then row."""
    p, window_patches = model.patch_size, model.context // model.patch_size
    count = rows.shape[1] // p
    cache = model.global_model.empty_cache(rows.shape[0], window_patches, torch.float32, rows.device)
    local_cache = model.local_model.empty_cache(rows.shape[0], p, torch.float32, rows.device)
    first, adapted = 0, 0  # the window's first patch; the patches the model has adapted to
    from_global = global_prefill(model, rows[:, :0], cache)
    for k in range(count):
        patch = rows[:, k * p : (k + 1) * p]  # a view: what visit returns lands in rows
        if known:
            patch[:] = visit(torch.stack([byte_logits(model, patch, j, from_global, local_cache) for j in range(p)], 1),
                             k * p)
        for j in range(0 if known else p):
            patch[:, j : j + 1] = visit(byte_logits(model, patch, j, from_global, local_cache)[:, None], k * p + j)
        if progress:
            progress(int(lengths.clamp(max=(k + 1) * p).sum()), int(lengths.sum()))
        if k + 1 == count:
            break
        if k + 1 - first < window_patches:
            position = torch.tensor([k + 1 - first], device=rows.device)
            from_global = model.global_step(model.embed_patches(patch, (k - first) * p), position,
                                            filled(cache, k + 2 - first))
            continue
        # The window is full: it slides by half, as score()'s windows do.
        if adapt:
            window = rows[:, first * p : (k + 1) * p]
            adapt_model(model, window, (adapted - first) * p, lengths, first * p, adapt)
            adapted = k + 1
        first = k + 1 - window_patches // 2
        cache = model.global_model.empty_cache(rows.shape[0], window_patches, torch.float32, rows.device)
        from_global = global_prefill(model, rows[:, first * p : (k + 1) * p], cache)


def segment_count(n: int, context: int) -> int:
    """How many rows compress cuts n bytes into for a model of `context` bytes; decompress
    accepts no other count. Short inputs go as up to SHORT_ROWS rows of ROW_BYTES or more, as
    one row would take a model call per byte; longer ones as rows at least a context long, so
    the model reads as much of the past as it can (a long-context checkpoint codes 1 MB in 8
    rows, not 64)."""
    return max(1, min(MAX_SEGMENTS, MAX_ROWS_CONTEXT // context, max(min(SHORT_ROWS, n // ROW_BYTES), n // context)))


def payload_bounds(n: int) -> tuple[float, float]:
    """The fewest and most payload bytes that can code n bytes. The encoder's range starts
    under 2^64 and ends in [2^56, 2^64); it shifts out a byte per 8 bits the bytes cost, so
    within 8 bits of their sum, and the flush adds 8 bytes: 7 + n·min/8 to 8 + n·max/8."""
    return 7 + n * MIN_BITS_PER_BYTE / 8, 8 + n * MAX_BITS_PER_BYTE / 8


def split_rows(data: bytes, segments: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bytes cut into `segments` rows of equal length (the last may be shorter), padded
    with zeros to whole patches -> (rows (S, L), lengths (S,))."""
    n = len(data)
    per_row = -(-n // segments)
    width = max(patch_size, -(-per_row // patch_size) * patch_size)
    rows = torch.zeros(segments, width, dtype=torch.long)
    flat = torch.tensor(np.frombuffer(data, np.uint8), dtype=torch.long)
    lengths = torch.tensor([max(0, min(per_row, n - s * per_row)) for s in range(segments)])
    for s in range(segments):
        rows[s, : lengths[s]] = flat[s * per_row : s * per_row + lengths[s]]
    return rows, lengths


@contextmanager
def coding_setup(model, threads: int, adapt: Adaptation | None):
    """The thread count both ends share, and a private copy of the model if it is to learn."""
    if next(model.parameters()).dtype != torch.float32:
        raise CompressError("Compression needs the model in fp32: bf16 arithmetic differs between machines.")
    if not hasattr(model, "global_step"):
        raise CompressError("Compression needs a MegaByte checkpoint.")
    before = torch.get_num_threads()
    if before != threads:  # the command line; the app runs at THREADS from start-up: its requests never change it
        torch.set_num_threads(threads)
    try:
        yield copy.deepcopy(model) if adapt else model
    finally:
        if before != threads:
            torch.set_num_threads(before)


def checkpoint_sha256(folder) -> str:
    """What identifies a checkpoint's arithmetic: its config.json and its weights."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def compress(model, data: bytes, checkpoint_sha256: str, layout: dict, checkpoint: str = "",
             adapt: Adaptation | None = None, progress: Callable[[int, int], None] | None = None) -> bytes:
    """The .mbz file for `data`. `layout` is recorded as it is (the app's); `checkpoint` names it for people."""
    device = next(model.parameters()).device
    segments = segment_count(len(data), model.context)
    encoder = RangeEncoder()
    if data:
        rows, lengths = split_rows(data, segments, model.patch_size)
        valid = lengths.tolist()
        recalled = planned_recall(model, rows, lengths)

        def encode(logits, position):
            frequencies = cumulative_frequencies(logits, position_slice(recalled, position, logits.shape[1]))  # (S, P, 257)
            x = rows[:, position : position + logits.shape[1], None].numpy()
            starts = np.take_along_axis(frequencies, x, -1)[..., 0].T.tolist()  # (P, S): position, then row
            ends = np.take_along_axis(frequencies, x + 1, -1)[..., 0].T.tolist()
            totals = frequencies[..., -1].T.tolist()
            for j in range(len(starts)):
                for s in range(len(valid)):
                    if position + j < valid[s]:
                        encoder.encode(starts[j][s], ends[j][s] - starts[j][s], totals[j][s])
            return rows[:, position : position + logits.shape[1]].to(device)

        with coding_setup(model, THREADS, adapt) as coder:
            walk(coder, rows.to(device), lengths.to(device), encode, known=True, adapt=adapt, progress=progress)
    payload = encoder.finish()
    header = {
        "checkpoint_sha256": checkpoint_sha256, "checkpoint": checkpoint, "layout": layout,
        "length": len(data), "crc32": zlib.crc32(data), "payload_bytes": len(payload),
        "segments": segments, "threads": THREADS, "torch": torch.__version__, "isa": isa(device),
        "adapt": asdict(adapt) if adapt else None,
    }
    return pack(header, payload)


def pack(header: dict, payload: bytes) -> bytes:
    """A .mbz file: the magic bytes, the format version, the header's size, the header as JSON, the payload."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + bytes([FORMAT_VERSION]) + len(encoded).to_bytes(4, "little") + encoded + payload


def edited(blob: bytes, **fields) -> bytes:
    """The .mbz `blob` with these header fields changed and its payload kept, as an attacker would
    write it: the tests and bench.load send such files."""
    header = read_header(blob)
    return pack({**header, **fields}, blob[len(blob) - header["payload_bytes"] :])


def well_typed(header: dict) -> bool:
    """Each field of its type; strings printable (our sentences echo them, on one line); counts not negative."""
    for key, kind in HEADER_TYPES.items():
        value = header[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.isprintable()):
            return False
    return isinstance(header["adapt"], (dict, type(None))) and min(header[key] for key in COUNTS) >= 0


def read_header(blob: bytes) -> dict:
    """The header of a .mbz file, checked for shape and for truncation."""
    if blob[:4] != MAGIC:
        raise CompressError("This is not a .mbz file: it does not start with the .mbz magic bytes.")
    if len(blob) < 9:
        raise CompressError("The .mbz file is truncated: its header is incomplete.")
    if blob[4] != FORMAT_VERSION:
        raise CompressError(f"This .mbz file has format version {blob[4]}; this program reads version {FORMAT_VERSION}.")
    size = int.from_bytes(blob[5:9], "little")
    if size > MAX_HEADER_BYTES:
        raise CompressError(f"The .mbz header is corrupt: it claims {size:,} bytes, and a .mbz header "
                            f"takes at most {MAX_HEADER_BYTES:,}.")
    if len(blob) < 9 + size:
        raise CompressError("The .mbz file is truncated: its header is incomplete.")
    try:
        header = json.loads(blob[9 : 9 + size])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise CompressError("The .mbz header is corrupt: it is not valid JSON.") from None
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise CompressError("The .mbz header is corrupt: its fields are not the ones this format has.")
    if not well_typed(header):
        raise CompressError("The .mbz header is corrupt: its fields do not have the types this format has.")
    missing = 9 + size + header["payload_bytes"] - len(blob)
    if missing > 0:
        raise CompressError(f"The .mbz file is truncated: {missing:,} bytes of its payload are missing.")
    if missing < 0:
        raise CompressError(f"The .mbz file is corrupt: {-missing:,} bytes follow its payload.")
    return header


def check_claims(header: dict, context: int, max_length: int, layouts: Collection[dict] | None,
                 adaptations: Collection[Adaptation | None]) -> Adaptation | None:
    """Refuses, before any work, a header that compress could not have written for this reader,
    or that asks for more bytes than it allows; returns the adaptation to repeat."""
    n = header["length"]
    if layouts is not None and header["layout"] not in layouts:
        raise CompressError("The .mbz header is corrupt: its layout is not one its checkpoint writes.")
    if n > max_length:
        raise CompressError(f"This .mbz holds {n:,} bytes, more than the {max_length:,} allowed here.")
    if header["segments"] != segment_count(n, context):
        raise CompressError(f"The .mbz header is corrupt: it claims {header['segments']:,} segments, and "
                            f"{n:,} bytes are coded in {segment_count(n, context)}.")
    if header["threads"] != THREADS:
        raise CompressError(f"The .mbz header is corrupt: it claims {header['threads']:,} threads, and .mbz "
                            f"files are coded on {THREADS}.")
    written = [adapt for adapt in adaptations if (asdict(adapt) if adapt else None) == header["adapt"]]
    if not written:
        raise CompressError("The .mbz header is corrupt: its adaptation is not one its checkpoint is used with.")
    fewest, most = payload_bounds(n)
    if not fewest <= header["payload_bytes"] <= most:
        raise CompressError(f"The .mbz file is corrupt: a payload of {header['payload_bytes']:,} bytes cannot "
                            f"code {n:,} bytes.")
    return written[0]  # the reader's own: the header's numbers may be equal but not of the same type


def decompress(model, blob: bytes, checkpoint_sha256: str, progress: Callable[[int, int], None] | None = None, *,
               max_length: int = MAX_LENGTH, layouts: Collection[dict] | None = None,
               adaptations: Collection[Adaptation | None] = (None, Adaptation())) -> tuple[bytes, dict]:
    """(the original bytes, the layout recorded with them), or CompressError in one sentence.
    What the header may claim: at most `max_length` bytes, one of `layouts` (the app passes those
    its checkpoint writes; the layout is opaque here, so None takes any) and of `adaptations`
    (None: without). Every claim is checked before any work that grows with it."""
    header = read_header(blob)
    device = next(model.parameters()).device
    if header["checkpoint_sha256"] != checkpoint_sha256:
        raise CompressError(f"This .mbz was made with another checkpoint ({header['checkpoint'] or 'unnamed'}, "
                            f"sha256 {header['checkpoint_sha256'][:12]}...); decompress it with that one.")
    here = {"torch": torch.__version__, "isa": isa(device)}
    for key, value in here.items():
        if header[key] != value:
            raise CompressError(f"This .mbz was made with {key} {header[key]} and this machine has {value}: "
                                "the model's arithmetic could differ, so it cannot be decoded safely here.")
    adapt = check_claims(header, model.context, max_length, layouts, adaptations)
    n = header["length"]
    rows, lengths = split_rows(bytes(n), header["segments"], model.patch_size)
    if n:
        decoder = RangeDecoder(blob[len(blob) - header["payload_bytes"] :])
        valid = lengths.tolist()
        orders = model.config.recall
        recallers = [recall.Recaller(orders) for _ in valid] if orders else []

        def decode(logits, position):
            guesses = [recaller.predict() for recaller in recallers]
            recalled = (torch.tensor([g[0] for g in guesses]), torch.tensor([g[1] for g in guesses])) if orders else None
            frequencies = cumulative_frequencies(logits[:, 0], recalled)
            out = np.zeros((len(frequencies), 1), np.int64)
            for s, row in enumerate(frequencies):
                if position < valid[s]:
                    symbol = int(np.searchsorted(row, decoder.target(int(row[-1])), side="right")) - 1
                    decoder.consume(int(row[symbol]), int(row[symbol + 1] - row[symbol]))
                    out[s] = symbol
                    if recallers:
                        recallers[s].push(symbol)
            return torch.from_numpy(out).to(device)

        rows = rows.to(device)
        with coding_setup(model, THREADS, adapt) as coder:
            walk(coder, rows, lengths.to(device), decode, known=False, adapt=adapt, progress=progress)
    data = b"".join(rows[s, : valid_length].cpu().numpy().astype(np.uint8).tobytes()
                    for s, valid_length in enumerate(lengths.tolist()))
    if zlib.crc32(data) != header["crc32"]:
        raise CompressError("The .mbz payload is corrupt: the decoded bytes fail their checksum.")
    return data, header["layout"]


def coded_scores(model, data: bytes, adapt: Adaptation | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Scores:
    """Per-byte surprisal and entropy as compress() sees them (with adaptation if asked):
    what `score --adapt` reports. The coded size is their sum in bits, to within 0.01%."""
    n = len(data)
    surprisal, entropy = np.zeros(n, np.float32), np.zeros(n, np.float32)
    if not n:
        return Scores(surprisal, entropy)
    segments = segment_count(n, model.context)
    rows, lengths = split_rows(data, segments, model.patch_size)
    per_row, device = -(-n // segments), next(model.parameters()).device
    valid = lengths.tolist()
    recalled = planned_recall(model, rows, lengths)

    def measure(logits, position):
        m = logits.shape[1]
        logp = logits.float().log_softmax(-1)
        if recalled is not None:
            logp = recall.mix(logp.exp(), *position_slice(recalled, position, m)).log()
        bits = (-logp.gather(-1, rows[:, position : position + m, None].to(device))[..., 0] / np.log(2)).cpu()
        spread = (-(logp.exp() * logp).sum(-1) / np.log(2)).cpu()
        for s in range(len(bits)):
            end = max(0, min(m, valid[s] - position))  # the row's bytes in this patch
            surprisal[s * per_row + position : s * per_row + position + end] = bits[s, :end].numpy()
            entropy[s * per_row + position : s * per_row + position + end] = spread[s, :end].numpy()
        return rows[:, position : position + m].to(device)

    with coding_setup(model, THREADS, adapt) as coder:
        walk(coder, rows.to(device), lengths.to(device), measure, known=True, adapt=adapt, progress=progress)
    return Scores(surprisal, entropy)
