"""Real .mbz files: their size beside the model's estimate and xz, coding speed, and what
learning while reading (--adapt) gains.

    python -m bench.mbz                         # the assets, each with its modality's checkpoint
    python -m bench.mbz --adapt FILE --checkpoint checkpoints/text

Times are CPU seconds of this process (one torch thread, as compression uses), so a machine
busy with other work does not inflate them.
"""

from __future__ import annotations

import argparse
import lzma
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import model.compress as mbz
from adapters.checkpoints import encode_media, load_for
from model import read_config, score

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
# asset folder: (modality, the checkpoint that codes it)
ASSET_CHECKPOINTS = {"text": ("text", "text"), "images": ("image", "image"), "emoji": ("image", "emoji"),
                     "audio": ("audio", "audio"), "melody": ("audio", "melody")}


def xz(data: bytes) -> bytes:
    """xz -9e (Python's lzma), the yardstick .mbz files are set beside."""
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def mbz_file(model, data: bytes, checkpoint_sha256: str = "", layout: dict | None = None, checkpoint: str = "",
             adapt: mbz.Adaptation | None = None, progress=None) -> bytes:
    """The .mbz file that `model` makes of `data`, header included; with the checkpoint's sha256,
    layout and name it is the file `python -m app.cli compress` writes."""
    return mbz.compress(model, data, checkpoint_sha256, layout or {"modality": "bytes"}, checkpoint, adapt=adapt,
                        progress=progress)


@dataclass
class Coded:
    """Files coded as .mbz, each on its own, beside the model's estimate for the same bytes and xz."""

    original: int  # bytes coded
    files: int
    mbz: int  # .mbz bytes, headers included
    headers: int  # of which the container's magic, version, header length and JSON header
    estimate: float  # bytes: score()'s surprisal of the same bytes summed, / 8
    xz: int  # xz -9e bytes, each file on its own as well

    @property
    def payload_over_estimate(self) -> float:
        """How much the range coder's payloads exceed the estimate, as a fraction of it."""
        return (self.mbz - self.headers) / self.estimate - 1


def code_files(model, files: list[bytes], surprisal: list[np.ndarray], checkpoint_sha256: str = "",
               layout: dict | None = None, checkpoint: str = "", desc: str | None = None) -> Coded:
    """Each of `files` coded as its own .mbz file; surprisal[i] is score()'s for files[i]."""
    sizes = []
    with tqdm(total=sum(map(len, files)), desc=desc, unit="B", unit_scale=True, disable=desc is None) as bar:
        for data in files:
            start = bar.n
            blob = mbz_file(model, data, checkpoint_sha256, layout, checkpoint,
                            progress=lambda done, _: bar.update(start + done - bar.n))
            sizes.append((len(blob), len(blob) - mbz.read_header(blob)["payload_bytes"]))
            bar.update(start + len(data) - bar.n)
    return Coded(original=sum(map(len, files)), files=len(files), mbz=sum(size for size, _ in sizes),
                 headers=sum(header for _, header in sizes),
                 estimate=sum(float(s.sum(dtype=np.float64)) for s in surprisal) / 8,
                 xz=sum(len(xz(data)) for data in files))


def coding_rates(model, data: bytes) -> dict[str, float]:
    """Bytes/s (CPU time) of score(), compress() and decompress() on `data`, one torch thread;
    checks that decompress gives `data` back."""
    torch.set_num_threads(1)
    rates = {}
    start = time.process_time()
    score(model, data)
    rates["score"] = len(data) / (time.process_time() - start)
    start = time.process_time()
    blob = mbz_file(model, data)
    rates["compress"] = len(data) / (time.process_time() - start)
    start = time.process_time()
    decoded, _ = mbz.decompress(model, blob, "")
    rates["decompress"] = len(data) / (time.process_time() - start)
    assert decoded == data, "decompress did not give the input back"
    return rates


def adaptation_gain(model, data: bytes, adapt: mbz.Adaptation = mbz.Adaptation()) -> dict[str, float]:
    """Bits per byte as compress codes them without and with --adapt, and the CPU seconds of each."""
    torch.set_num_threads(1)
    report = {}
    for name, setting in (("plain", None), ("adapt", adapt)):
        start = time.process_time()
        report[f"{name}_bits_per_byte"] = mbz.coded_scores(model, data, setting).bits_per_byte
        report[f"{name}_seconds"] = time.process_time() - start
    report["fewer_bits"] = 1 - report["adapt_bits_per_byte"] / report["plain_bits_per_byte"]
    return report


def asset_table() -> str:
    rows = ["| file | modality | coded bytes | model estimate | .mbz bytes | xz -9e bytes | .mbz / xz |",
            "|---|---|---|---|---|---|---|"]
    for folder, (modality, name) in ASSET_CHECKPOINTS.items():
        checkpoint = ROOT / "checkpoints" / name
        model, layout = load_for(modality, checkpoint)
        sha256 = mbz.checkpoint_sha256(checkpoint)
        for path in sorted((ASSETS / folder).iterdir()):
            data = encode_media(path, layout)
            coded = code_files(model, [data], [score(model, data).surprisal], sha256, layout.to_dict(), name)
            rows.append(f"| {path.name} | {modality} | {coded.original:,} | {coded.estimate:,.0f} | {coded.mbz:,} | "
                        f"{coded.xz:,} | {coded.mbz / coded.xz:.2f} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.mbz", description=__doc__.split("\n")[0])
    parser.add_argument("--adapt", type=Path, metavar="FILE", help="measure --adapt's gain on FILE instead")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "text",
                        help="the checkpoint that codes FILE (default: checkpoints/text)")
    parser.add_argument("--bytes", type=int, default=1 << 20, help="how much of FILE (default: 1 MiB)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.adapt is None:
        print(asset_table())
        return
    model, layout = load_for(read_config(args.checkpoint)["layout"]["modality"], args.checkpoint)
    data = encode_media(args.adapt, layout)[: args.bytes]
    print(f"{args.adapt}: {len(data):,} bytes as {layout.modality}", adaptation_gain(model, data))


if __name__ == "__main__":
    main()
