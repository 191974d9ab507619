"""Adapters: media ⇄ bytes round trips, partial decoding, and one-sentence errors for bad files."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from adapters import AdapterError, Layout, audio, image, text

settings.register_profile("adapters", max_examples=40, deadline=None)
settings.load_profile("adapters")

RASTER = Layout("image", image_size=32)
PATCH = Layout("image", image_size=32, image_order="patch", patch_size=8)
IMAGE_LAYOUTS = [
    RASTER, PATCH,
    Layout("image", image_size=36, image_order="patch", patch_size=12),
    Layout("image", image_size=48, image_order="patch", patch_size=192),
]
AUDIO = Layout("audio", sample_rate=16000)


def assert_one_sentence(error):
    """error: what pytest.raises caught, or the exception itself."""
    message = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert "\n" not in message and message.endswith("."), message


def random_image(size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_file(img, fmt):
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def tone(seconds, rate, hz=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.stack([wave] * channels, axis=1).astype(np.float32)


def audio_file(samples, rate, fmt, subtype):
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def flip_bits(data, bits):
    flipped = bytearray(data)
    for bit in bits:
        flipped[bit // 8] ^= 1 << bit % 8
    return bytes(flipped)


def damaged(original):
    """A strategy: the file cut short, or with one to eight of its bits flipped, half of them in
    its first 64 bytes, where headers make their claims (sizes, rates, lengths)."""
    cut = st.integers(0, len(original) - 1).map(lambda end: original[:end])
    bit = st.integers(0, 8 * min(64, len(original)) - 1) | st.integers(0, 8 * len(original) - 1)
    flipped = st.lists(bit, min_size=1, max_size=8).map(lambda bits: flip_bits(original, bits))
    return cut | flipped


def resident_peak_mb():
    return int(re.search(r"VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def peak_memory_growth_mb(work):
    """How far the process's peak resident memory rose above its size while work() ran. Not
    tracemalloc: it does not see the pixel buffers Pillow allocates in C."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak starts again from the current size
    except OSError:
        pytest.skip("measuring peak memory needs Linux's /proc/self/clear_refs")
    before = resident_peak_mb()
    work()
    return resident_peak_mb() - before


# ---------------------------------------------------------------- layout

@pytest.mark.parametrize("layout", IMAGE_LAYOUTS + [AUDIO, Layout("text"), Layout("bytes", patch_size=8)])
def test_layout_round_trips_through_a_dict(layout):
    d = layout.to_dict()
    assert None not in d.values()
    assert Layout.from_dict(d) == layout


def test_text_layout_dict_has_only_what_it_means():
    assert Layout("text").to_dict() == {"modality": "text"}


@pytest.mark.parametrize("patch_size, side", [(8, 4), (16, 4), (12, 2), (192, 8), (3, 1)])
def test_patch_order_blocks_hold_whole_patches(patch_size, side):
    layout = Layout("image", image_size=64, image_order="patch", patch_size=patch_size)
    assert layout.block_side == side
    assert (3 * side * side) % patch_size == 0
    assert RASTER.block_side == 1 and RASTER.bytes_per_image == 32 * 32 * 3


@pytest.mark.parametrize("d", [
    {}, [], {"modality": "video"}, {"modality": "image"}, {"modality": "image", "image_size": 16},
    {"modality": "image", "image_size": "64"}, {"modality": "image", "image_size": 64, "image_order": "zigzag"},
    {"modality": "image", "image_size": 64, "image_order": "patch"},
    {"modality": "image", "image_size": 34, "image_order": "patch", "patch_size": 8},
    {"modality": "audio"}, {"modality": "audio", "sample_rate": 44100}, {"modality": "text", "sample_rate": 8000},
    {"modality": "text", "image_size": 64}, {"modality": "bytes", "patch_size": 0}, {"modality": "text", "colour": 1},
])
def test_nonsense_layouts_are_rejected(d):
    with pytest.raises(AdapterError) as error:
        Layout.from_dict(d)
    assert_one_sentence(error)


# ---------------------------------------------------------------- text

@given(st.text())
def test_text_round_trips(s):
    assert text.decode(text.encode(s)) == s


@given(st.binary(max_size=200))
def test_text_decode_never_fails_and_spans_tile_the_bytes(data):
    shown = text.decode(data)
    spans = text.char_spans(data)
    assert len(spans) == len(shown)  # one span per displayed character
    boundaries = [0] + [end for _, end in spans]
    assert [start for start, _ in spans] == boundaries[:-1]
    assert boundaries[-1] == len(data) and all(start < end for start, end in spans)


def test_char_spans_follow_utf8_widths():
    assert text.char_spans("aé€😀".encode()) == [(0, 1), (1, 3), (3, 6), (6, 10)]


def test_a_stream_cut_inside_a_character_shows_each_stray_byte():
    data = "ok €".encode()[:-1]  # the euro sign's last byte is not generated yet
    assert text.decode(data) == "ok \ufffd\ufffd"
    assert text.char_spans(data)[-2:] == [(3, 4), (4, 5)]


def test_text_read(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo", encoding="utf-8")
    assert text.read(path) == "héllo".encode()
    path.write_bytes(b"")
    with pytest.raises(AdapterError, match="empty") as error:
        text.read(path)
    assert_one_sentence(error)
    with pytest.raises(AdapterError) as error:
        text.read(tmp_path / "missing.txt")
    assert_one_sentence(error)


# ---------------------------------------------------------------- image: bytes

@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
@given(seed=st.integers(0, 2**32 - 1))
def test_image_round_trips_exactly(layout, seed):
    img = random_image(layout.image_size, seed)
    data = image.encode(img, layout)
    assert len(data) == layout.bytes_per_image
    assert np.array_equal(np.asarray(image.decode(data, layout)), np.asarray(img))


def test_patch_order_emits_each_block_contiguously():
    img = random_image(32, 0)
    pixels = np.asarray(img)
    data = image.encode(img, PATCH)  # P=8: 4x4 blocks of 48 bytes
    assert data[:48] == pixels[:4, :4].tobytes()
    assert data[48:96] == pixels[:4, 4:8].tobytes()
    assert data[8 * 48 : 9 * 48] == pixels[4:8, :4].tobytes()
    assert image.encode(img, RASTER) == pixels.tobytes()


@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
@given(data=st.data())
def test_partial_stream_decodes_with_missing_bytes_marked(layout, data):
    full = image.encode(random_image(layout.image_size, 1), layout)
    n = data.draw(st.integers(0, len(full) + 10))
    shown = image.decode(full[:n], layout, missing=(255, 0, 255))
    assert shown.size == (layout.image_size, layout.image_size)
    unmarked = image.encode(Image.new("RGB", shown.size, (255, 0, 255)), layout)
    assert image.encode(shown, layout) == full[:n] + unmarked[n:]


@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
@given(data=st.data())
def test_prefix_bytes_hold_the_top_rows(layout, data):
    size = layout.image_size
    rows = data.draw(st.integers(0, size))
    img = random_image(size, 2)
    n = image.prefix_bytes(rows, layout)
    top = np.asarray(image.decode(image.encode(img, layout)[:n], layout))
    assert np.array_equal(top[:rows], np.asarray(img)[:rows])
    assert n == -(-rows // layout.block_side) * layout.block_side * size * 3


def test_prefix_bytes_of_raster_rows_and_rows_outside_the_image():
    assert image.prefix_bytes(5, RASTER) == 5 * 32 * 3
    assert image.prefix_bytes(5, PATCH) == 8 * 32 * 3  # rounded up to whole 4-pixel block rows
    with pytest.raises(AdapterError):
        image.prefix_bytes(33, RASTER)


@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
def test_surprisal_map_sums_each_pixels_bytes(layout):
    img = random_image(layout.image_size, 3)
    per_byte = np.frombuffer(image.encode(img, layout), np.uint8).astype(float)
    heat = image.surprisal_map(per_byte, layout)
    assert np.array_equal(heat, np.asarray(img).astype(float).sum(axis=2))
    partial = image.surprisal_map(per_byte[:100], layout)  # unscored pixels are NaN
    assert np.isnan(partial).sum() == layout.image_size**2 - 33


def test_upscale_repeats_pixels():
    img = random_image(32, 4)
    big = image.upscale(img, 4)
    assert big.size == (128, 128)
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(img))


def test_encode_needs_the_layout_size():
    with pytest.raises(AdapterError) as error:
        image.encode(random_image(40, 0), RASTER)
    assert_one_sentence(error)


# ---------------------------------------------------------------- image: loading

def test_load_accepts_every_kind_of_source(tmp_path):
    img = random_image(64, 5)
    path = tmp_path / "a.png"
    img.save(path)
    png = path.read_bytes()
    sources = [path, str(path), png, io.BytesIO(png), img, np.asarray(img), np.asarray(img) / 255.0]
    expected = np.asarray(image.load(img, RASTER))
    for source in sources:
        loaded = image.load(source, RASTER)
        assert loaded.mode == "RGB" and loaded.size == (32, 32)
        assert np.abs(np.asarray(loaded).astype(int) - expected).max() <= 1
    jpeg = image.load(image_file(img, "JPEG"), RASTER)
    assert jpeg.size == (32, 32)


def test_load_keeps_the_centre_square():
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)
    wide[:, 40:80] = (0, 0, 255)
    wide[:, 80:] = (0, 255, 0)
    centre = np.asarray(image.load(image_file(Image.fromarray(wide), "PNG"), RASTER))
    assert (np.abs(centre.astype(int) - (0, 0, 255)).max(axis=2) < 8).mean() > 0.9


def test_load_composites_transparency_on_white_and_reads_grey():
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert np.all(np.asarray(image.load(image_file(clear, "PNG"), RASTER)) == 255)
    grey16 = Image.fromarray(np.full((32, 32), 128 * 256, np.uint16))
    assert np.all(np.asarray(image.load(image_file(grey16, "PNG"), RASTER)) == 128)
    assert np.all(np.asarray(image.load(np.full((8, 8), 7, np.uint8), RASTER)) == 7)


@pytest.mark.parametrize("bad", [
    b"", b"not an image at all", np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), 3.5,
])
def test_load_rejects_empty_corrupt_and_unsupported_input(bad):
    with pytest.raises(AdapterError) as error:
        image.load(bad, RASTER)
    assert_one_sentence(error)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_load_rejects_truncated_images(fmt, keep):
    data = image_file(random_image(64, 6), fmt)
    with pytest.raises(AdapterError) as error:
        image.load(data[: int(len(data) * keep)], RASTER)
    assert_one_sentence(error)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's; we refuse it
def test_load_refuses_a_144_megapixel_png_before_decoding_it():
    bomb = image_file(Image.new("1", (12_000, 12_000)), "PNG")  # one colour: 144 MP in a small file

    def refused():
        with pytest.raises(AdapterError, match="million pixels") as error:
            image.load(bomb, RASTER)
        assert_one_sentence(error)

    assert len(bomb) < 1_000_000
    assert peak_memory_growth_mb(refused) < 50  # decoded, it takes 144 MB at a byte a pixel, 432 MB as RGB


def test_load_refuses_images_over_its_pixel_cap(monkeypatch):
    monkeypatch.setattr(image, "MAX_PIXELS", 64 * 64 - 1)
    for fmt in ("PNG", "JPEG"):  # JPEG too, though it is decoded at a fraction of its size
        with pytest.raises(AdapterError, match="million pixels") as error:
            image.load(image_file(random_image(64, 7), fmt), RASTER)
        assert_one_sentence(error)
    assert image.load(image_file(random_image(63, 7), "PNG"), RASTER).size == (32, 32)


def test_load_decodes_a_large_jpeg_at_a_fraction_of_its_size():
    photo = image_file(Image.new("RGB", (6000, 4000), (200, 120, 40)), "JPEG")  # 24 MP: 72 MB decoded
    loaded = []
    assert peak_memory_growth_mb(lambda: loaded.append(image.load(photo, RASTER))) < 20
    assert np.abs(np.asarray(loaded[0], int) - (200, 120, 40)).max() <= 2


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("width, mean_difference", [(256, 0), (2048, 1)])
def test_load_shrinks_large_images_close_to_a_full_resize(fmt, width, mean_difference):
    """Images up to 8 times the layout's side come out as a plain resize of the whole image gives
    them; larger ones, shrunk first, within a level or so."""
    smooth = random_image(8, 8).resize((width, width * 3 // 4), Image.Resampling.BICUBIC)
    data = image_file(smooth, fmt)
    full_resize = ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (32, 32), method=Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(image.load(data, RASTER), int) - np.asarray(full_resize, int))
    assert difference.mean() <= mean_difference


def exif_rotated(img, fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated a quarter turn
    buffer = io.BytesIO()
    img.save(buffer, fmt, exif=exif)
    return buffer.getvalue()


def test_load_turns_photos_upright_by_their_exif():
    img = random_image(24, 4).crop((0, 0, 24, 20))
    upright = image.open_rgb(exif_rotated(img, "PNG"))
    assert np.array_equal(np.asarray(upright), np.asarray(img.transpose(Image.Transpose.ROTATE_270)))


TRANSLUCENT = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 24, 4), np.uint8))
IMAGE_FILES = {"PNG": exif_rotated(TRANSLUCENT, "PNG"), "JPEG": exif_rotated(random_image(24, 3), "JPEG")}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF:UserWarning", "ignore:Truncated File Read:UserWarning")  # Pillow's
@pytest.mark.parametrize("fmt", IMAGE_FILES)
@settings(max_examples=150)
@given(data=st.data())
def test_damaged_images_load_or_give_one_sentence(fmt, data):
    """Cut or bit-flipped files: an image of the layout's size, or one sentence of ours, never another error."""
    try:
        loaded = image.load(data.draw(damaged(IMAGE_FILES[fmt])), RASTER)
    except AdapterError as error:
        assert_one_sentence(error)
    else:
        assert loaded.mode == "RGB" and loaded.size == (32, 32)


def test_image_load_rejects_audio_and_missing_files(tmp_path):
    with pytest.raises(AdapterError, match="not an image") as error:
        image.load(audio_file(tone(0.1, 8000), 8000, "WAV", "PCM_16"), RASTER)
    assert_one_sentence(error)
    with pytest.raises(AdapterError) as error:
        image.load(tmp_path / "missing.png", RASTER)
    assert_one_sentence(error)


def test_image_functions_need_an_image_layout():
    with pytest.raises(AdapterError):
        image.decode(b"", AUDIO)


# ---------------------------------------------------------------- audio: µ-law

def expand(code):
    """Reference µ-law expansion of a (possibly fractional) code, independent of the adapter."""
    y = np.asarray(code, float) / 255 * 2 - 1
    return np.sign(y) * ((1 + 255) ** np.abs(y) - 1) / 255


@given(st.lists(st.floats(-1, 1), min_size=1, max_size=50))
def test_mulaw_round_trips_within_its_bin(samples):
    x = np.array(samples)
    codes = np.frombuffer(audio.encode(x, AUDIO), np.uint8)
    decoded = audio.decode(codes.tobytes(), AUDIO) / 32767
    bin_width = expand(np.minimum(codes + 0.5, 255)) - expand(np.maximum(codes - 0.5, 0))
    assert np.all(np.abs(decoded - x) <= bin_width + 1 / 32767)


def test_mulaw_spans_all_codes_monotonically():
    codes = np.frombuffer(audio.encode(np.linspace(-1, 1, 200001), AUDIO), np.uint8)
    assert codes[0] == 0 and codes[-1] == 255 and np.all(np.diff(codes.astype(int)) >= 0)
    assert len(set(codes)) == 256
    assert np.frombuffer(audio.encode([-5.0, 5.0, np.nan], AUDIO), np.uint8).tolist()[:2] == [0, 255]


def test_seconds_to_bytes():
    assert audio.seconds_to_bytes(1.5, AUDIO) == 24000
    assert audio.seconds_to_bytes(2, Layout("audio", sample_rate=8000)) == 16000


# ---------------------------------------------------------------- audio: files

def dominant_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples))
    return np.argmax(spectrum) * rate / len(samples)


@pytest.mark.parametrize("fmt, subtype, rate, channels", [
    ("WAV", "PCM_16", 44100, 2), ("FLAC", "PCM_16", 22050, 1), ("OGG", "VORBIS", 16000, 1), ("WAV", "FLOAT", 8000, 1),
])
def test_load_reads_mono_at_the_layout_rate(fmt, subtype, rate, channels):
    data = audio_file(tone(1.0, rate, hz=440, channels=channels), rate, fmt, subtype)
    samples = audio.load(data, AUDIO)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 16000) <= 1
    assert np.abs(samples).max() <= 1
    assert abs(dominant_hz(samples, 16000) - 440) < 2
    assert 0.45 < np.abs(samples[2000:-2000]).max() < 0.55  # the 0.5 amplitude survives resampling


def test_load_accepts_paths_and_file_objects_and_caps_length(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(2.0, 8000), 8000)
    eight = Layout("audio", sample_rate=8000)
    assert len(audio.load(path, eight)) == 16000
    assert len(audio.load(str(path), eight, max_seconds=0.5)) == 4000
    with open(path, "rb") as f:
        assert len(audio.load(f, AUDIO, max_seconds=1)) == 16000


def test_resampling_removes_what_the_new_rate_cannot_hold():
    data = audio_file(tone(1.0, 44100, hz=12000), 44100, "WAV", "FLOAT")  # above 8 kHz Nyquist
    assert np.abs(audio.load(data, AUDIO)[100:-100]).max() < 0.01  # away from the abrupt start and end


def test_pcm_writes_and_reads_back(tmp_path):
    pcm = audio.decode(audio.encode(tone(0.25, 16000)[:, 0], AUDIO), AUDIO)
    read, rate = sf.read(io.BytesIO(audio.to_wav_bytes(pcm, 16000)), dtype="int16")
    assert rate == 16000 and np.array_equal(read, pcm)
    audio.write(tmp_path / "out.flac", pcm, 16000)
    read, rate = sf.read(tmp_path / "out.flac", dtype="int16")
    assert rate == 16000 and np.array_equal(read, pcm)
    with pytest.raises(AdapterError):
        audio.write(tmp_path / "out.unknown", pcm, 16000)


@pytest.mark.parametrize("bad", [
    b"", b"this is not sound", image_file(random_image(32, 0), "PNG"),
    audio_file(np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16"),  # a header and no samples
])
def test_load_rejects_empty_corrupt_unsupported_and_silent_files(bad):
    with pytest.raises(AdapterError) as error:
        audio.load(bad, AUDIO)
    assert_one_sentence(error)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.95])
def test_load_rejects_truncated_audio(fmt, subtype, keep):
    data = audio_file(tone(1.0, 16000), 16000, fmt, subtype)
    with pytest.raises(AdapterError) as error:
        audio.load(data[: int(len(data) * keep)], AUDIO)
    assert_one_sentence(error)


def test_audio_load_rejects_a_missing_file(tmp_path):
    with pytest.raises(AdapterError) as error:
        audio.load(tmp_path / "missing.wav", AUDIO)
    assert_one_sentence(error)


@pytest.mark.parametrize("rate", [1, 3999, 192_001, 96_000_000])
def test_load_refuses_absurd_sample_rates(rate):
    with pytest.raises(AdapterError, match="sample rate") as error:
        audio.load(audio_file(tone(0.01, 8000), rate, "WAV", "PCM_16"), AUDIO)  # the rate only claimed
    assert_one_sentence(error)


@pytest.mark.parametrize("rate", [4000, 192_000])
def test_load_takes_the_lowest_and_highest_sample_rates(rate):
    assert len(audio.load(audio_file(tone(0.5, rate), rate, "WAV", "PCM_16"), AUDIO)) == 8000


def test_load_refuses_audio_too_short_for_one_sample():
    with pytest.raises(AdapterError, match="no samples") as error:
        audio.load(audio_file(tone(3 / 192_000, 192_000), 192_000, "WAV", "PCM_16"), AUDIO)  # 3 samples: 0.25 at 16 kHz
    assert_one_sentence(error)


def test_load_allocates_what_a_file_holds_not_what_its_header_claims():
    flac = bytearray(audio_file(tone(1.0, 16000), 16000, "FLAC", "PCM_16"))
    # STREAMINFO, right after "fLaC" and its block header, ends its 36-bit sample count in bytes 21-25
    flac[21] |= 0x0F
    flac[22:26] = b"\xff" * 4
    assert sf.info(io.BytesIO(bytes(flac))).frames == 2**36 - 1  # 256 GB as float32
    with pytest.raises(AdapterError) as error:
        audio.load(bytes(flac), AUDIO)
    assert_one_sentence(error)
    assert len(audio.load(bytes(flac), AUDIO, max_seconds=0.5)) == 8000


def test_load_reads_only_the_seconds_it_uses():
    flac = audio_file(tone(2.0, 16000), 16000, "FLAC", "PCM_16")
    cut = flac[: len(flac) * 6 // 10]  # the end, unread, is missing
    assert len(audio.load(cut, AUDIO, max_seconds=0.5)) == 8000
    with pytest.raises(AdapterError):
        audio.load(cut, AUDIO)


AUDIO_FILES = {"WAV": audio_file(tone(0.2, 22050, channels=2), 22050, "WAV", "PCM_16"),
               "FLAC": audio_file(tone(0.2, 16000), 16000, "FLAC", "PCM_16"),
               "OGG": audio_file(tone(0.3, 16000), 16000, "OGG", "VORBIS")}


@pytest.mark.parametrize("fmt", AUDIO_FILES)
@settings(max_examples=150)
@given(data=st.data())
def test_damaged_audio_loads_or_gives_one_sentence(fmt, data):
    """Cut or bit-flipped files: mono samples, or one sentence of ours, never another error."""
    try:
        samples = audio.load(data.draw(damaged(AUDIO_FILES[fmt])), AUDIO)
    except AdapterError as error:
        assert_one_sentence(error)
    else:
        assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples)


def test_continuation_metrics_tell_noise_from_a_continued_tone():
    layout_rate = 8000
    t = np.arange(layout_rate) / layout_rate
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    noise = np.random.default_rng(0).standard_normal(layout_rate) * 0.4 / np.sqrt(2)
    same = audio.continuation_metrics(tone, 0.4 * np.sin(2 * np.pi * 440 * (t + 1)))
    noisy = audio.continuation_metrics(tone, noise)
    assert noisy["flatness"] > 0.8 and same["flatness"] < 0.01
    assert same["similarity"] > 0.95 and noisy["similarity"] < 0.3
    assert same["rms_drift"] == pytest.approx(1, abs=0.01) and noisy["rms_drift"] == pytest.approx(1, abs=0.1)
    assert audio.continuation_metrics(tone, 2 * tone)["rms_drift"] == pytest.approx(2, rel=0.01)


def test_an_upload_is_checked_without_decoding_its_pixels(monkeypatch):
    photo = (Path(__file__).resolve().parent.parent / "assets" / "images" / "chelsea.png").read_bytes()
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the pixels were decoded"))
    image.check(photo)
    for cut in (2000, len(photo) - 20):
        with pytest.raises(AdapterError, match="^The image file is truncated or corrupt.$"):
            image.check(photo[:cut])
    with pytest.raises(AdapterError, match="^This is not an image Pillow can read"):
        image.check(b"plain words")
