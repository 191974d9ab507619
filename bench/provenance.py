"""The line every results file opens with: when, for how long, by which command, on what machine."""

from __future__ import annotations

import platform
import sys
from datetime import datetime

import torch

from model.hardware import machine_description


def measured_line(module: str, started: datetime, seconds: float, argv: list[str] | None = None,
                  device: torch.device = torch.device("cpu")) -> str:
    minutes, rest = divmod(round(seconds), 60)
    command = " ".join([f"python -m {module}", *(argv if argv is not None else sys.argv[1:])])
    return (f"Measured {started:%Y-%m-%d %H:%M} UTC in {minutes} min {rest} s by `{command}` on "
            f"{machine_description(device)}; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}.")
