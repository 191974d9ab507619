"""Every cap and range a user meets, in one place: the app's controls and the command line
check the same numbers and refuse with the same sentence, naming the control ("Samples: at most 8")."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from app.service import UserError

# Caps, each named in the interface. Speeds measured on 2 shared CPU cores with one torch thread.
MAX_UPLOAD_MB = 5  # a million-byte text fits
MAX_SCORE_BYTES = 1_000_000  # text or raw bytes in the explorer, scored whole: ~45 s with the text model (~23 KB/s)
DETAIL_BYTES = 4_096  # the explorer colours only this window of the input: ~0.5 MB of HTML, not 1 MB of spans
# A clip, as a prompt or in the explorer, may fill the checkpoint's context (audio_seconds); a
# checkpoint whose context is shorter still takes this much, read through sliding windows.
SHORT_CONTEXT_AUDIO_SECONDS = 5.0
MAX_CONTINUE_SECONDS = 4.0  # generation makes ~300-1,000 bytes a second: 4 s of 8 kHz audio is 30-100 s
MAX_SAMPLES = 8
MAX_SEED = 2**31 - 1  # what a browser's number box holds exactly, and torch's generator takes
MAX_TEMPERATURE = 2.0
# The command line scores whole files; past this it asks for --max-bytes, since scoring runs at
# ~30,000-40,000 bytes/s on 2 CPU cores: 10 MB is about five minutes.
MAX_CLI_SCORE_BYTES = 10_000_000


def shown(number: float) -> str:
    """A limit as people write it: 8, 0.25, 2,147,483,647."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"


@dataclass(frozen=True)
class Range:
    """A number a user sets, by the name its control carries."""

    name: str
    low: float
    high: float
    whole: bool = False

    def check(self, value) -> int | float:
        """The value as a number inside the range, or a UserError that names the control."""
        kind = "a whole number" if self.whole else "a number"
        wrong = f"{self.name}: {kind} from {shown(self.low)} to {shown(self.high)}, not {value!r}."
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(wrong) from None
        if math.isnan(number) or (self.whole and not number.is_integer()):
            raise UserError(wrong)
        if number < self.low:
            raise UserError(f"{self.name}: at least {shown(self.low)}.")
        if number > self.high:
            raise UserError(f"{self.name}: at most {shown(self.high)}.")
        return int(number) if self.whole else number

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def argument(self, text: str) -> int | float:
        """The check as an argparse type: its sentence, not argparse's "invalid value"."""
        try:
            return self.check(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


SAMPLES = Range("Samples", 1, MAX_SAMPLES, whole=True)
TEMPERATURE = Range("Temperature", 0, MAX_TEMPERATURE)
TOP_K = Range("Top-k", 0, 256, whole=True)
SEED = Range("Seed", 0, MAX_SEED, whole=True)
CONTINUE_SECONDS = Range("Seconds to continue", 0.25, MAX_CONTINUE_SECONDS)


def switch(name: str, value) -> bool:
    """An on/off control's value, which an API client might send as anything."""
    if not isinstance(value, bool):
        raise UserError(f"{name}: true or false, not {value!r}.")
    return value


def rows(image_size: int, block_side: int = 1) -> Range:
    """Top rows to keep: at least one, and at least one row (or row of blocks) left to make."""
    return Range("Top rows to keep", 1, image_size - block_side, whole=True)


def audio_seconds(context_seconds: float) -> float:
    """The most seconds of a clip a checkpoint takes, as a prompt or in the explorer: the whole
    seconds its context holds (16 for 131,072 bytes at 8 kHz), at least SHORT_CONTEXT_AUDIO_SECONDS."""
    return float(max(SHORT_CONTEXT_AUDIO_SECONDS, math.floor(context_seconds)))


def prompt_seconds(context_seconds: float) -> Range:
    return Range("Prompt seconds", 0.25, audio_seconds(context_seconds))


def window_start(length: int) -> Range:
    """The first byte of the explorer's coloured window in an input of `length` bytes."""
    return Range("Window start", 0, max(length - 1, 0), whole=True)
