"""Recall: the byte that followed the last time the model saw what it sees now, mixed into its
prediction (a match model, as in PAQ and xz's dictionary; a cache, as in Grave et al. 2017).

A tune rendered from MIDI repeats its notes sample for sample, and the neural model, in the
compute it had, did not learn to copy: it spends ~6 bits on a byte it has seen follow the same
64 bytes before (bench/results/context.md). Recall does: for each of a few orders k, the byte
that followed the most recent earlier occurrence of the last k bytes, if that occurrence lies
within the last LOOKBACK bytes (a MiB: recall has no weights, so it can remember further than
the model's context, as xz's dictionary does); the longest order that has one predicts. Its
weight is how often that order's predictions were right so far in this stream,
(hits + ½) / (tries + 1), and the byte's probability is
(1 − weight)·p_model + weight·[byte = predicted].

Occurrences are found as a compressor finds them, in a table per order indexed by the top
bits of a 64-bit polynomial hash of the k bytes, which keeps the latest position and hash
written to each slot: memory bounded by the table, not the input. Two forms compute the
same: `plan` for bytes known in advance (scoring, the encoder), vectorised, and `Recaller`, a
byte at a time (the decoder, generation). They give the same predictions and the same float32
weights, so the coder's two ends agree to the bit.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

MULTIPLIER = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2^64
MASK = (1 << 64) - 1
INVERSE = pow(MULTIPLIER, -1, 1 << 64)
# The orders the shipped checkpoints use, and how far back recall looks, measured on 6 validation
# tunes (1.74 MB) scored by melody_long: 5.73 bits per byte without recall; with these, 3.29
# looking back over the model's 128 KiB context, 2.86 over a MiB (2.87 with 2^19 slots, 2.89
# with 2^18); orders (6, 12, 32, 128): 2.94; six orders from 4 to 256: 2.86.
ORDERS = (4, 6, 12, 32, 128)
LOOKBACK = 1 << 20
MAX_SLOT_BITS = 19  # 5 orders × 2^19 slots × 12 bytes: 31 MB a stream


def slot_bits(lookback: int) -> int:
    """Each order's table has 2^bits slots: about twice the positions it must remember, at most
    2^MAX_SLOT_BITS (where slots are overwritten, an older occurrence is forgotten)."""
    return min(MAX_SLOT_BITS, max(8, (lookback - 1).bit_length() + 1))


def prefix_hashes(x: np.ndarray) -> np.ndarray:
    """H[i] = sum over t < i of x[t]·M^(i-1-t) mod 2^64, for i in 0..n: (n + 1,) uint64.
    The hash of x[i-k:i] is H[i] − H[i-k]·M^k. Computed as M^(i-1)·Σ x[t]·M^(-t), as numpy's
    uint64 products and sums wrap modulo 2^64."""
    n = len(x)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(n, MULTIPLIER, np.uint64))  # M^1..M^n
        inverse_powers = np.cumprod(np.r_[np.uint64(1), np.full(max(n - 1, 0), INVERSE, np.uint64)])  # M^0..M^-(n-1)
        sums = np.cumsum(x.astype(np.uint64) * inverse_powers)
        hashes = np.zeros(n + 1, np.uint64)
        if n:
            hashes[1:] = sums * np.r_[np.uint64(1), powers[:-1]]
    return hashes


def plan(data: bytes | np.ndarray, orders: tuple[int, ...], lookback: int = LOOKBACK) -> tuple[np.ndarray, np.ndarray]:
    """For every position of `data`: the byte recall predicts there (-1: none) and its weight
    (float32, 0 where none), each computed from the bytes before it only."""
    x = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.asarray(data, np.uint8)
    n = len(x)
    predicted = np.full(n, -1, np.int64)
    order_used = np.full(n, -1, np.int64)
    prefix = prefix_hashes(x)
    positions, shift = np.arange(n), np.uint64(64 - slot_bits(lookback))
    with np.errstate(over="ignore"):
        for o, k in enumerate(orders):
            if n <= k:
                continue
            at = positions[k:]  # the positions that have k bytes before them
            hashes = prefix[k:n] - prefix[: n - k] * np.uint64(pow(MULTIPLIER, k, 1 << 64))
            slots = hashes >> shift
            # by slot, then position: what a slot held at a position is the one before it in its run
            order = np.lexsort((at, slots))
            same = np.r_[False, slots[order][1:] == slots[order][:-1]]
            later, earlier = order[same], order[np.flatnonzero(same) - 1]
            found = (hashes[later] == hashes[earlier]) & (at[later] - at[earlier] + k <= lookback)
            later, earlier = at[later[found]], at[earlier[found]]
            predicted[later] = x[earlier]
            order_used[later] = o  # later orders are longer: the longest that matches wins
    weight = np.zeros(n, np.float32)
    hit = predicted == x
    for o in range(len(orders)):
        where = np.flatnonzero(order_used == o)
        hits_before = np.cumsum(hit[where]) - hit[where]
        weight[where] = ((hits_before + 0.5) / (np.arange(len(where)) + 1.0)).astype(np.float32)
    return predicted, weight


class Recaller:
    """plan, a byte at a time: predict() for the next byte, then push() the byte that came."""

    def __init__(self, orders: tuple[int, ...], lookback: int = LOOKBACK):
        self.orders, self.lookback = orders, lookback
        self.powers = [pow(MULTIPLIER, k, 1 << 64) for k in orders]
        self.shift = 64 - slot_bits(lookback)
        # per order, per slot: the latest position written there and its hash. A position is at
        # least its order, so 0 means none, and the zeroed tables take memory only where written.
        self.positions = np.zeros((len(orders), 1 << slot_bits(lookback)), np.int32)
        self.hashes = np.zeros((len(orders), 1 << slot_bits(lookback)), np.uint64)
        self.hits, self.tries = [0] * len(orders), [0] * len(orders)
        self.prefix = deque([0] * (max(orders) + 1), maxlen=max(orders) + 1)  # the latest of H[0..n], H[n] last
        self.bytes = bytearray()
        self.guess: tuple[int, int, int] = (-1, -1, -1)  # (predicted byte, order, its position) for the next one
        # generation's place in the occurrence it copies: kept past a byte that differs from it
        self.follow, self.follow_order = -1, -1

    def predict(self) -> tuple[int, float]:
        """(the byte recall predicts next, or -1; its weight as a float32 value)."""
        byte, o, _ = self.guess
        if byte < 0:
            return -1, 0.0
        return byte, float(np.float32((self.hits[o] + 0.5) / (self.tries[o] + 1.0)))

    def continuation(self, n: int) -> tuple[bytes, float]:
        """For generation: the n bytes that followed the occurrence it follows, copied as LZ77
        copies (a repeat shorter than n repeats again), and the hit rate of the order that found
        it; (b"", 0.0) where there is none. Unlike predict(), the place is kept when a byte
        differs (the model drew another one): the next bytes still come from the same tune."""
        start = self.follow
        if start < 0:
            return b"", 0.0
        o = self.follow_order
        copied = bytearray(self.bytes[start : start + n])
        while len(copied) < n:  # the occurrence runs into the bytes being copied now
            copied.append(copied[len(copied) - (len(self.bytes) - start)])
        return bytes(copied), float(np.float32((self.hits[o] + 0.5) / (self.tries[o] + 1.0)))

    def extend(self, data: bytes):
        for byte in data:
            self.push(byte)

    def push(self, byte: int):
        byte_was, o, _ = self.guess
        if byte_was >= 0:
            self.hits[o] += byte_was == byte
            self.tries[o] += 1
        self.bytes.append(byte)
        self.prefix.append((self.prefix[-1] * MULTIPLIER + byte) & MASK)
        n = len(self.bytes)
        self.guess = (-1, -1, -1)
        for o, (k, power) in enumerate(zip(self.orders, self.powers)):
            if n < k:
                break
            key = (self.prefix[-1] - self.prefix[-1 - k] * power) & MASK
            slot = key >> self.shift
            earlier, earlier_key = int(self.positions[o, slot]), int(self.hashes[o, slot])
            self.positions[o, slot], self.hashes[o, slot] = n, key
            if earlier and earlier_key == key and n - earlier + k <= self.lookback:
                self.guess = (self.bytes[earlier], o, earlier)
        if self.guess[0] >= 0:
            self.follow, self.follow_order = self.guess[2], self.guess[1]
        elif self.follow >= 0:
            self.follow += 1


def mixed_surprisal(surprisal: np.ndarray, data: bytes, orders: tuple[int, ...], lookback: int = LOOKBACK) -> np.ndarray:
    """Bits per byte with recall mixed in, from the neural model's own (score(..., recall=False)):
    the mixture's probability of the byte that came needs only the model's probability of it.
    Equal to score()'s with recall but for float rounding."""
    predicted, weight = plan(data, orders, lookback)
    came = predicted == np.frombuffer(data, np.uint8)
    return -np.log2((1 - weight) * np.exp2(-surprisal.astype(np.float64)) + weight * came)


def mix(probs: torch.Tensor, predicted: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(1 − weight)·probs + weight·onehot(predicted) over the last axis; probs (..., 256),
    predicted (...) long (-1: none, where weight is 0), weight (...) float32."""
    weight = weight.to(probs.device, probs.dtype)
    mixed = probs * (1 - weight)[..., None]
    return mixed.scatter_add(-1, predicted.to(probs.device).clamp(min=0)[..., None], weight[..., None])
