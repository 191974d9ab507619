"""What the app shows: plots as PIL images and surprisal-coloured HTML, pure functions of arrays.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot), so
requests served in parallel threads never share a current figure.
"""

from __future__ import annotations

import html
import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from PIL import Image

import adapters
from model.patches import entropy_boundaries, patch_sizes, threshold_for_mean_size
from model.score import window_plan

COLOURS = colormaps["YlOrRd"]
FULL_COLOUR_BITS = 12.0  # a character this surprising or more gets the darkest colour
LINE_COLOUR = "#d62728"
FAINT_COLOUR = "#c8c8c8"  # detail drawn behind a summary
ENTROPY_COLOUR = "#1f77b4"  # where an entropy patcher cuts, beside MegaByte's fixed patches in LINE_COLOUR
MARK_COLOUR = "#00e5ff"  # rings on a heat map's pixels, clear on magma's dark and light ends
DPI = 100
MOST_BARS = 500  # a surprisal chart's bars: past this many patches, each bar is the mean of several
# The patch chart keeps these margins (fractions of its width) instead of a tight crop, so that
# a click on it maps to a byte offset (byte_at).
CHART_WIDTH = 8  # inches
CHART_LEFT, CHART_RIGHT = 0.2, 0.95
HEX_PER_LINE = 32


def figure_image(fig: Figure, tight: bool = True) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return Image.open(buffer).convert("RGB")


def heat_map(bits: np.ndarray, title: str = "Surprisal of each pixel", marks: np.ndarray | None = None,
             marks_label: str = "") -> Image.Image:
    """A (size, size) map of bits per pixel with a colour bar; NaN pixels stay blank. Pixels
    where `marks` is true get a ring, named in a legend by `marks_label`."""
    fig = Figure(figsize=(4.4, 3.6))
    ax = fig.subplots()
    shown = ax.imshow(bits, cmap="magma", interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="bits per pixel (R + G + B)")
    if marks is not None:
        rows, columns = np.nonzero(marks)
        ax.scatter(columns, rows, s=9, facecolors="none", edgecolors=MARK_COLOUR, linewidths=0.7, label=marks_label)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), fontsize="small", frameon=False)
    ax.set_title(title)
    ax.set_axis_off()
    return figure_image(fig)


def patch_means(values: np.ndarray, width: int) -> np.ndarray:
    """Mean of each run of `width` values (a patch, or a window of samples); the last may be short."""
    values = np.asarray(values, dtype=np.float64)
    starts = np.arange(0, len(values), width)
    return np.add.reduceat(values, starts) / np.diff(np.append(starts, len(values)))


def entropy_cuts(entropy: np.ndarray, patch_size: int) -> np.ndarray:
    """Where BLT's entropy patcher would start its patches (model.patches), with the global
    threshold that makes its patches as long as MegaByte's on average."""
    return entropy_boundaries(entropy, threshold_for_mean_size(entropy, patch_size))


def entropy_patch_line(entropy: np.ndarray, patch_size: int) -> str:
    """One sentence setting the entropy patcher's patches beside MegaByte's fixed ones."""
    n = len(entropy)
    sizes = patch_sizes(entropy_cuts(entropy, patch_size), n)
    fixed = -(-n // patch_size)
    return (f"An entropy patcher with the same mean patch size would cut {len(sizes):,} patches of "
            f"{sizes.min()}–{sizes.max()} bytes (median {np.median(sizes):g}) where MegaByte cuts "
            f"{fixed:,} of {patch_size}.")


def charts_with_patches(entropy, height: float) -> tuple[Figure, object, object | None]:
    """A figure 8 wide: the main chart's axes, and under them (with entropy) a strip for patch_strip."""
    if entropy is None:
        fig = Figure(figsize=(CHART_WIDTH, height))
        return fig, fig.subplots(), None
    fig = Figure(figsize=(CHART_WIDTH, height + 0.9))
    ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [height, 0.9], "hspace": 0.08})
    return fig, ax, strip


def patch_strip(ax, entropy: np.ndarray, patch_size: int, scale: float = 1.0, most_ticks: int = 200):
    """Two rows, MegaByte's patches of `patch_size` bytes over an entropy patcher's of the same
    mean size: a tick where each patch starts or, past `most_ticks` patches (ticks would merge),
    a shade for how densely patches start. x is the byte offset times `scale`."""
    n = len(entropy)
    rows = [(np.arange(0, n, patch_size), LINE_COLOUR, f"MegaByte: every {patch_size} bytes"),
            (entropy_cuts(entropy, patch_size), ENTROPY_COLOUR, "entropy patcher")]
    for offset, (starts, colour, _) in zip((1, 0), rows):
        if n / patch_size <= most_ticks:
            ax.eventplot(starts * scale, lineoffsets=offset, linelengths=0.8, linewidths=1.2, colors=colour)
        else:  # patches started per byte in a few hundred bins of whole patches, darkest at twice the mean
            width = patch_size * -(-n // (300 * patch_size))
            bins = np.minimum(np.arange(0, n + width, width), n)
            whole = -(-np.diff(bins) // patch_size) * patch_size  # a short last bin counts as whole patches
            density = np.histogram(starts, bins)[0] / whole
            shade = LinearSegmentedColormap.from_list(colour, ["#ffffff", colour])
            ax.imshow(density[None], cmap=shade, vmin=0, vmax=2 / patch_size, aspect="auto", interpolation="nearest",
                      extent=(0, n * scale, offset - 0.4, offset + 0.4))
    ax.set_yticks([1, 0], [label for _, _, label in rows], fontsize="small")
    for label, (_, colour, _) in zip(ax.get_yticklabels(), rows):
        label.set_color(colour)
    ax.set_ylim(-0.6, 1.6)
    ax.tick_params(axis="y", length=0)
    return "patches start at the ticks" if n / patch_size <= most_ticks else "darker: patches start more often"


def label_x(ax, strip, label: str, entropy, patch_size: int, scale: float = 1.0):
    """Names the x axis under the chart or, with a strip (charts_with_patches), draws the strip and names it there."""
    if strip is None:
        ax.set_xlabel(label)
    else:
        strip.set_xlabel(f"{label}; {patch_strip(strip, entropy, patch_size, scale)}")


def bar_bytes(n: int, patch_size: int) -> int:
    """The bytes one bar of a patch chart stands for: a patch, or as many whole patches as keep
    the bars of n bytes to MOST_BARS."""
    return patch_size * max(1, -(-n // (MOST_BARS * patch_size)))


def patch_chart(surprisal: np.ndarray, patch_size: int, entropy: np.ndarray | None = None,
                title: str = "Surprisal of each byte and patch") -> Image.Image:
    """The whole input at a glance: each patch's mean bits as a bar one patch wide, drawn over
    the faint bits of each byte, or past MOST_BARS patches each bar the mean of several; with
    `entropy`, a strip below marks where MegaByte's patches start and where an entropy
    patcher's would. Its margins are fixed, so that byte_at reads a click on it."""
    n = len(surprisal)
    width = bar_bytes(n, patch_size)
    edges = np.append(np.arange(0, n, width), n)
    fig, ax, strip = charts_with_patches(entropy, 3)
    fig.subplots_adjust(left=CHART_LEFT, right=CHART_RIGHT)
    if width == patch_size:  # a line through every byte is readable only while a bar is one patch
        ax.plot(np.arange(n) + 0.5, surprisal, color=FAINT_COLOUR, linewidth=0.5, zorder=1, label="each byte")
    mean_of = f"patch mean ({patch_size} bytes)" if width == patch_size else f"mean of {width:,} bytes"
    ax.stairs(patch_means(surprisal, width), edges, baseline=0, fill=True, color=LINE_COLOUR, alpha=0.75,
              zorder=2, label=mean_of)
    ax.set_xlim(0, max(n, 1))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_ylabel("bits")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title)
    label_x(ax, strip, "byte offset", entropy, patch_size)
    return figure_image(fig, tight=False)


def byte_at(x: float, n: int) -> int:
    """The byte of an n-byte input under pixel column x of its patch chart."""
    share = (x / (CHART_WIDTH * DPI) - CHART_LEFT) / (CHART_RIGHT - CHART_LEFT)
    return int(np.clip(share * n, 0, max(n - 1, 0)))


def context_positions(n: int, context: int) -> np.ndarray:
    """Each byte's place in the window of `context` bytes that scored it (model.score.window_plan):
    how many bytes of context the model had read before it."""
    positions = np.empty(n, np.int64)
    for start, first, end in window_plan(n, context):
        positions[first:end] = np.arange(first - start, end - start)
    return positions


def context_chart(surprisal: np.ndarray, context: int, most_bins: int = 30,
                  title: str = "Mean surprisal by position in the context") -> Image.Image:
    """Mean bits by a byte's place in the model's context, in bins on a log scale from the
    first byte of a window to its last: the bits fall as the model sees more of the input."""
    places = context_positions(len(surprisal), context) + 1  # from 1: a log scale has no 0
    edges = np.unique(np.round(np.geomspace(1, places.max() + 1, most_bins + 1)).astype(np.int64))
    bins = np.searchsorted(edges, places, side="right") - 1  # every bin holds bytes: places run 1..max
    means = np.bincount(bins, surprisal, len(edges) - 1) / np.bincount(bins, minlength=len(edges) - 1)
    fig = Figure(figsize=(4.4, 2.8))
    ax = fig.subplots()
    ax.stairs(means, edges, baseline=None, color=LINE_COLOUR, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"position in the context window of {context:,} bytes")
    ax.set_ylabel("mean bits")
    ax.set_title(title)
    return figure_image(fig)


def position_chart(surprisal: np.ndarray, patch_size: int,
                   title: str = "Mean surprisal by position inside the patch") -> Image.Image:
    """Mean bits at each position 0..P-1 of a patch: position 0 is predicted from the global
    model alone, the later ones also from the bytes of the patch so far."""
    surprisal = np.asarray(surprisal, dtype=np.float64)
    positions = np.arange(len(surprisal)) % patch_size
    means = np.bincount(positions, surprisal, minlength=patch_size) / np.maximum(np.bincount(positions, minlength=patch_size), 1)
    fig = Figure(figsize=(4.4, 2.8))
    ax = fig.subplots()
    ax.bar(np.arange(patch_size), means, color=LINE_COLOUR, alpha=0.75)
    ax.set_xticks(np.arange(patch_size))
    ax.set_xlabel("position inside the patch")
    ax.set_ylabel("mean bits")
    ax.set_title(title)
    return figure_image(fig)


def surprisal_curve(surprisal: np.ndarray, rate: int, window_seconds: float = 0.02, entropy: np.ndarray | None = None,
                    patch_size: int = 8, title: str = "Surprisal over time") -> Image.Image:
    """Bits per sample over time, averaged over short windows so the curve is readable; with
    `entropy`, a strip below marks where patches of `patch_size` samples start and where an
    entropy patcher's would."""
    width = max(1, round(window_seconds * rate))
    means = patch_means(surprisal, width)
    fig, ax, strip = charts_with_patches(entropy, 2.6)
    ax.plot(np.arange(len(means)) * width / rate, means, color=LINE_COLOUR, linewidth=1)
    ax.set_ylabel(f"bits per sample\n(mean over {window_seconds * 1000:g} ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlim(0, max(len(surprisal) / rate, 1 / rate))
    label_x(ax, strip, "seconds", entropy, patch_size, scale=1 / rate)
    return figure_image(fig)


def waveform(pcm: np.ndarray, rate: int, split_seconds: float | None = None) -> Image.Image:
    """Waveform over spectrogram; a dashed line marks where the continuation starts."""
    seconds = np.arange(len(pcm)) / rate
    fig = Figure(figsize=(8, 4))
    wave_ax, spec_ax = fig.subplots(2, 1, sharex=True)
    wave_ax.plot(seconds, pcm / 32768, color="#1f77b4", linewidth=0.4)
    wave_ax.set_ylim(-1, 1)
    wave_ax.set_ylabel("amplitude")
    spec_ax.specgram(pcm.astype(np.float64) / 32768, NFFT=256, Fs=rate, noverlap=128, cmap="magma")
    spec_ax.set_ylabel("Hz")
    spec_ax.set_xlabel("seconds")
    if split_seconds is not None:
        wave_ax.axvline(split_seconds, color=LINE_COLOUR, linestyle="--", linewidth=1.5, label="continuation starts")
        spec_ax.axvline(split_seconds, color="white", linestyle="--", linewidth=1.5)
        wave_ax.legend(loc="lower left", fontsize="small")
    wave_ax.set_title("Waveform and spectrogram")
    wave_ax.set_xlim(0, max(len(pcm) / rate, 1 / rate))
    return figure_image(fig)


def continuation_measures(metrics: dict[str, float]) -> str:
    """adapters.audio.continuation_metrics as three lines a listener can read."""
    return (f"Spectral flatness (white noise ≈ 1, a tone ≈ 0): **{metrics['flatness']:.2f}**, "
            f"the prompt's last second {metrics['prompt_flatness']:.2f}  \n"
            f"Similarity to the prompt's last second (1 = the same spectrum): **{metrics['similarity']:.2f}**  \n"
            f"Loudness drift (RMS over the prompt's last second's): **{metrics['rms_drift']:.2f}×**")


def byte_label(b: int) -> str:
    """A byte as a reader sees it in a tooltip: the character if printable ASCII, else hex."""
    if b == 0x20:
        return "␣"
    if b == 0x0A:
        return "↵"
    return chr(b) if 0x21 <= b <= 0x7E else f"0x{b:02x}"


def colours(bits) -> list[tuple[str, str]]:
    """Background and a readable text colour for each surprisal in bits."""
    rgb = COLOURS(np.minimum(np.asarray(bits, dtype=np.float64) / FULL_COLOUR_BITS, 1.0))[:, :3]
    dark = rgb @ np.array([0.299, 0.587, 0.114]) < 0.55
    return [("#{:02x}{:02x}{:02x}".format(*channels), "#ffffff" if is_dark else "#000000")
            for channels, is_dark in zip((rgb * 255).round().astype(int), dark)]


def _spans(units, surprisal, top_bytes, top_probs) -> list[str]:
    """One <span> per (label, start, end) unit of the input, coloured by the bits of its bytes;
    its tooltip shows those bits and the model's top guesses for the unit's first byte."""
    starts = np.array([start for _, start, _ in units], dtype=np.int64)
    bits = np.add.reduceat(surprisal, starts) if len(units) else np.zeros(0)  # the units tile the input
    spans = []
    for (label, start, _), unit_bits, (background, ink) in zip(units, bits, colours(bits)):
        guesses = ", ".join(f"{byte_label(b)} {p:.1%}" for b, p in zip(top_bytes[start], top_probs[start]))
        title = html.escape(f"{unit_bits:.1f} bits\nexpected: {guesses}", quote=True)
        spans.append(f'<span style="background:{background};color:{ink}" title="{title}">'
                     f"{html.escape(label)}</span>")
    return spans


def legend(unit: str) -> str:
    steps = np.linspace(0, FULL_COLOUR_BITS, 7)
    cells = "".join(f'<span style="background:{background};color:{ink};padding:0 0.5em">{b:g}</span>'
                    for b, (background, ink) in zip(steps, colours(steps)))
    return (f'<div class="surprisal-legend" style="margin-bottom:0.5em">bits per {unit}: {cells}+ '
            "(hover for the model's guesses)</div>")


def text_html(data: bytes, surprisal, top_bytes, top_probs) -> str:
    """The UTF-8 text with each character coloured by its surprisal (the sum over its bytes)."""
    text = adapters.text.decode(data)
    units = [(char, start, end) for char, (start, end) in zip(text, adapters.text.char_spans(data))]
    body = "".join(_spans(units, surprisal, top_bytes, top_probs))
    return (legend("character")
            + '<div class="surprisal-text" style="font-family:ui-monospace,monospace;'
            f'white-space:pre-wrap;line-height:1.7">{body}</div>')


def hex_html(data: bytes, surprisal, top_bytes, top_probs, per_line: int = HEX_PER_LINE) -> str:
    """A hex dump of raw bytes, each byte coloured by its surprisal."""
    spans = _spans([(f"{b:02x}", i, i + 1) for i, b in enumerate(data)], surprisal, top_bytes, top_probs)
    lines = "\n".join(" ".join(spans[i : i + per_line]) for i in range(0, len(spans), per_line))
    return (legend("byte")
            + f'<div class="surprisal-hex" style="font-family:ui-monospace,monospace;white-space:pre">{lines}</div>')


def character_start(data: bytes, i: int) -> int:
    """Where the UTF-8 character that byte i is part of starts (at most 3 continuation bytes back)."""
    for _ in range(3):
        if 0 < i < len(data) and data[i] & 0xC0 == 0x80:
            i -= 1
    return i


def window_bounds(data: bytes, offset: int, size: int, kind: str) -> tuple[int, int]:
    """[start, end) of the window of `size` bytes from `offset`, moved back so that a window at
    the end is whole: for text on whole characters, for raw bytes from the start of a line of
    the hex dump."""
    start = max(0, min(offset, len(data) - size))
    end = min(start + size, len(data))
    if kind == "text":
        return character_start(data, start), character_start(data, end)
    return start - start % HEX_PER_LINE, end


def window_html(data: bytes, scores, kind: str, offset: int, size: int) -> str:
    """The text or hex dump of one window of the input (window_bounds), coloured byte by byte,
    under a line that says which bytes it is."""
    start, end = window_bounds(data, offset, size, kind)
    more = "" if end - start == len(data) else ": pick another by its start, or click the chart above"
    heading = f'<div class="surprisal-window">Bytes {start:,}–{end - 1:,} of {len(data):,}{more}</div>'
    shown = slice(start, end)
    draw = text_html if kind == "text" else hex_html
    return heading + draw(data[shown], scores.surprisal[shown], scores.top_bytes[shown], scores.top_probs[shown])
