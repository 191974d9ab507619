"""bench.compression, bench.mbz, bench.figures and bench.context on tiny random checkpoints and
tiny synthetic held-out data; bench.speed at its smallest sizes."""

import io
import json
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import model.compress as mbz
from adapters import Layout, audio
from adapters.checkpoints import load_for
from bench import compression, context, continuation, figures, speed
from bench.mbz import xz
from model import MegaByteConfig, Scores, build_model, save_checkpoint, score
from model.patches import entropy_boundaries, patch_sizes

LAYOUTS = {
    "text": Layout("text"),
    "image": Layout("image", image_size=32, patch_size=4),
    "audio": Layout("audio", sample_rate=8000),
}
ROWS = ["text: English prose", "text: prose and code", "images: 32x32 photo crops", "emoji: Twemoji and Noto, test split",
        "emoji: OpenMoji, a style never trained on", "audio: music", "audio: speech"]
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The commands set torch's thread count for their process; give the next test its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_split(folder, split, files: list[bytes], manifest: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.bin").write_bytes(b"".join(files))
    offsets = np.cumsum([0, *map(len, files)])
    manifest.setdefault("files", {})[split] = [{"offset": int(o), "bytes": len(f)} for o, f in zip(offsets, files)]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def mu_law_tone(hz: float, seconds: float) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    samples = 0.5 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(len(t))
    return audio.encode(samples, LAYOUTS["audio"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prose = [b"In the beginning God created the heaven and the earth. " * 60, b"And the earth was without form. " * 90]
    code = [b"def f(x):\n    return x + 1\n\n" * 100]
    write_split(root / "text", "val_prose", prose, {})
    write_split(root / "text", "val", prose + code, json.loads((root / "text" / "manifest.json").read_text()))
    gradient = np.linspace(0, 255, 32 * 32 * 3).astype(np.uint8).tobytes()
    noisy = [rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for _ in range(3)]
    write_split(root / "image", "val", [gradient] * 5 + noisy, {"layout": {"image_size": 32, "image_order": "raster"}})
    write_split(root / "emoji", "test", [gradient] * 3 + noisy, {"layout": {"image_size": 32, "image_order": "raster"}})
    write_split(root / "emoji", "outside", noisy, json.loads((root / "emoji" / "manifest.json").read_text()))
    audio_manifest = {"layout": {"sample_rate": 8000}}
    write_split(root / "audio", "val_music", [mu_law_tone(440, 0.5), mu_law_tone(220, 0.4)], audio_manifest)
    write_split(root / "audio", "val_speech", [mu_law_tone(150, 0.3)] * 3, audio_manifest)
    return root


def read_table(markdown: str, after: str = "") -> dict[str, dict[str, str]]:
    """The first Markdown table (after the heading `after`) as {row label: {column: cell}}."""
    lines = []
    for line in markdown.split(after, 1)[1].splitlines() if after else markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def scored_row(surprisal: list[list[float]], entropy: list[list[float]], patch_size: int,
               label: str = "row") -> compression.Measured:
    """A row of the report whose windows the model scored as given."""
    scores = [Scores(np.array(s, np.float32), np.array(e, np.float32)) for s, e in zip(surprisal, entropy)]
    windows = [bytes(len(s)) for s in surprisal]
    held_out = compression.HeldOut(label, "", windows, windows, {}, None)
    return compression.Measured(held_out, 0.0, {}, patch_size, scores)


def test_compression_table_has_every_row_and_yardstick(tiny_checkpoints, data, tmp_path, capsys):
    out = tmp_path / "results" / "compression.md"
    compression.main(["--checkpoints", str(tiny_checkpoints), "--data", str(data), "--out", str(out),
                      "--limit-bytes", "4096", "--mbz-bytes", "1024", "--threads", "1"])
    report = out.read_text()
    assert "UTC" in report and "cores" in report and "--limit-bytes 4096" in report
    assert "8 evenly spaced stretches of 512 bytes" in report  # what was used is said
    assert "1 of the 8 32x32 images" in report
    table = read_table(report)
    assert list(table) == ROWS
    for label, row in table.items():
        for column in ["bytes", "model", "gzip -9", "bzip2 -9", "xz -9e", "zstd -19", "best yardstick", "model / best"]:
            assert row[column] not in ("", "–"), (label, column)
        model = float(row["model"].strip("*"))
        best = float(row["best yardstick"].split()[0])
        assert 4 < model < 10  # an untrained model is near 8 bits per byte
        assert float(row["model / best"].rstrip("×")) == pytest.approx(model / best, rel=0.01)
        assert row["met"] in (("yes", "no") if row["target"] != "–" else ("–",))
    assert table["text: English prose"]["target"] == "≤ 0.65×"
    assert table["text: prose and code"]["target"] == "–"
    assert table["images: 32x32 photo crops"]["target"] == table["audio: music"]["target"] == "≤ 0.85×"
    assert table["emoji: Twemoji and Noto, test split"]["target"] == "≤ 0.60×"
    for label in ROWS:
        is_image, is_audio = label.startswith(("images", "emoji")), label.startswith("audio")
        assert (table[label]["PNG"] != "–") == is_image and (table[label]["WebP lossless"] != "–") == is_image
        assert (table[label]["FLAC"] != "–") == is_audio
    assert "held-out data" in capsys.readouterr().out  # the table is printed too
    coded = read_table(report, "## Real .mbz files: the first 1,024 bytes of each row")
    assert list(coded) == ROWS
    for label, row in coded.items():
        assert row["coded bytes"] == "1,024"
        mbz_bytes, headers = int(row[".mbz"].split()[0].replace(",", "")), int(row["of which headers"].replace(",", ""))
        assert 0 < headers < mbz_bytes and row["payload − estimate"].endswith("%)")
        # each window its own file: the first two stretches of 512 bytes, or the first image cut
        assert row[".mbz files"] == ("1" if label.startswith(("images", "emoji")) else "2")
    positions = read_table(report, "## Bits per byte by position inside the patch")
    assert list(positions) == ROWS and all(row["P"] == "4" and 4 < float(row["3"]) < 10 for row in positions.values())
    assert (out.parent / "positions.png").is_file() and "positions.png" in report
    patches = read_table(report, "## Where an entropy patcher would cut")
    assert list(patches) == ROWS
    assert patches["text: English prose"]["fixed patches"] == f"{8 * 512 // 4:,}"  # 8 stretches of 512 bytes, P=4


def test_mbz_column_is_the_size_of_real_mbz_files(tiny_checkpoints):
    folder = tiny_checkpoints / "text"
    model, layout = load_for("text", folder)
    windows = [bytes(range(256)) * 3, b"And the earth was without form, and void. " * 20]
    recorded = {"checkpoint_sha256": mbz.checkpoint_sha256(folder), "layout": layout.to_dict(), "checkpoint": "text"}
    row = compression.measure(model, compression.HeldOut("row", "", windows, windows, {}, None), 1000, recorded)
    share = [windows[0], windows[1][:232]]  # the first 1000 bytes, the second window cut
    assert compression.first_bytes(windows, 1000) == share
    blobs = [mbz.compress(model, data, recorded["checkpoint_sha256"], layout.to_dict(), "text") for data in share]
    assert row.coded.mbz == sum(map(len, blobs)) and row.coded.files == 2 and row.coded.original == 1000
    assert row.coded.headers == sum(len(blob) - mbz.read_header(blob)["payload_bytes"] for blob in blobs)
    estimate = sum(score(model, data).surprisal.sum(dtype=np.float64) for data in share) / 8
    assert row.coded.estimate == pytest.approx(estimate, rel=1e-4)
    payload = row.coded.mbz - row.coded.headers  # what the model predicts, and the coder's 8-byte flush a file
    assert abs(payload - row.coded.estimate - 8 * row.coded.files) < 0.01 * row.coded.estimate
    cells = read_table(compression.mbz_table([row]))["row"]
    assert cells[".mbz"].startswith(f"{row.coded.mbz:,} (") and cells["coded bytes"] == "1,000"
    assert compression.measure(model, row.held_out, 0).coded is None  # --mbz-bytes 0 codes nothing


def test_position_means_equal_a_hand_computation():
    surprisal = [[1, 2, 3, 4, 5], [6, 7]]  # each window starts a patch
    means = compression.position_means([np.array(s) for s in surprisal], 2)
    assert means == pytest.approx([(1 + 3 + 5 + 6) / 4, (2 + 4 + 7) / 3])
    cells = read_table(compression.positions_table([scored_row(surprisal, [[0] * 5, [0] * 2], 2),
                                                    scored_row([[1, 2, 4]], [[0] * 3], 3, "P=3")]))
    assert cells["row"]["0"] == "3.75" and cells["row"]["1"] == "4.33" and cells["row"]["2"] == "–"
    assert cells["row"]["0 / the rest"] == f"{3.75 / (13 / 3):.2f}×"
    assert [cells["P=3"][c] for c in ("0", "1", "2", "0 / the rest")] == ["1.00", "2.00", "4.00", "0.33×"]


def test_entropy_patch_table_counts_agree_with_patch_sizes():
    entropy = [[0, 5, 0, 0, 5, 0, 0, 0], [3, 0, 2.5, 6]]
    cut = compression.entropy_patches([np.array(e, np.float64) for e in entropy], 4, jump=2)
    assert cut.fixed == 3 and cut.threshold == pytest.approx(3.5)  # one byte in 4 of the row is above 3.5
    for sizes, rule in ((cut.global_sizes, {"threshold": cut.threshold}), (cut.jump_sizes, {"jump": 2})):
        assert list(sizes) == [s for e in entropy for s in patch_sizes(entropy_boundaries(np.array(e), **rule), len(e))]
    assert list(cut.global_sizes) == [1, 3, 4, 3, 1]  # cut at 5, 5 and 6
    assert list(cut.jump_sizes) == [1, 3, 4, 2, 1, 1]  # and at the rise 0 -> 2.5
    cells = read_table(compression.entropy_table([scored_row([[0] * 8, [0] * 4], entropy, 4)], jump=2))["row"]
    assert (cells["fixed patches"], cells["patches"], cells["median size"], cells["largest"]) == ("3", "5", "3", "4")
    assert cells["1-byte patches"] == "40%" and cells["jump > 2 bits: patches"] == "6" and cells["mean size"] == "2.0"


def test_missing_checkpoint_is_skipped_and_missing_data_is_one_sentence(tiny_checkpoints, data, tmp_path):
    only_text = tmp_path / "checkpoints"
    only_text.mkdir()
    (only_text / "text").symlink_to(tiny_checkpoints / "text")
    out = tmp_path / "compression.md"
    compression.main(["--checkpoints", str(only_text), "--data", str(data), "--out", str(out), "--limit-bytes", "2048",
                      "--mbz-bytes", "0", "--threads", "1"])
    assert list(read_table(out.read_text())) == ROWS[:2]
    assert "## Real .mbz files" not in out.read_text()  # --mbz-bytes 0 codes none
    assert f"No checkpoint at `{only_text / 'image'}`" in out.read_text()
    with pytest.raises(SystemExit, match=r"python -m training.data text"):
        compression.main(["--checkpoints", str(only_text), "--data", str(tmp_path / "nowhere"), "--out", str(out)])


def test_general_compressors_on_known_inputs():
    zeros = bytes(100_000)
    noise = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    for name, compress in compression.GENERAL.items():
        assert compression.bits_per_byte(compress, [zeros]) < 0.1, name
        assert 7.95 < compression.bits_per_byte(compress, [noise]) < 8.2, name


def test_media_codecs_on_known_inputs():
    flat_tile = bytes([200, 100, 50]) * 1024
    noise_tile = rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
    png = {"format": "PNG", "optimize": True}
    webp = {"format": "WEBP", "lossless": True, "quality": 100, "method": 6}
    for options in [png, webp]:
        tile_file = partial(compression.image_file, side=32, **options)
        assert compression.bits_per_byte(tile_file, [flat_tile]) < 1
        assert compression.bits_per_byte(tile_file, [noise_tile]) > 7.9
        decoded = Image.open(io.BytesIO(tile_file(noise_tile))).convert("RGB")
        assert decoded.tobytes() == noise_tile  # lossless, one 32x32 tile
    flac_file = partial(compression.flac_file, layout=LAYOUTS["audio"])
    silence = audio.encode(np.zeros(8000), LAYOUTS["audio"])
    noise = rng.integers(0, 256, 8000, dtype=np.uint8).tobytes()
    assert compression.bits_per_byte(flac_file, [silence]) < 1
    assert compression.bits_per_byte(flac_file, [noise]) > 8  # µ-law noise expanded to 16 bits


def test_evenly_spaced_stretches_cover_the_split_and_cut_at_files():
    data = bytes(range(256)) * 40  # 10,240 bytes
    file_starts = [0, 1500, 5000]
    assert compression.evenly_spaced(data, file_starts, 20_000) == ([data], [data[:1500], data[1500:5000], data[5000:]])
    windows, pieces = compression.evenly_spaced(data, file_starts, 800)
    assert len(windows) == compression.STRETCHES and {len(w) for w in windows} == {100}
    assert windows[0] == data[:100] and windows[-1] == data[-100:]
    assert b"".join(pieces) == b"".join(windows)
    assert len(pieces) == compression.STRETCHES + 1  # the second stretch, 1448..1548, spans the file start at 1500


def test_figures_draw_completions_and_surprisal(tiny_checkpoints, tmp_path):
    figures.main(["--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path), "--images", "2", "--samples", "2",
                  "--text-bytes", "300"])
    completions = Image.open(tmp_path / "image_completions.png")
    surprisal = Image.open(tmp_path / "text_surprisal.png")
    assert completions.width > 4 * 128 and completions.height > 2 * 128  # original, given, 2 samples; 2 photos
    assert Image.open(tmp_path / "emoji_completions.png").size == completions.size  # the emoji checkpoint too
    assert surprisal.width > surprisal.height


def test_without_a_byte_limit_the_asked_number_of_images_is_used(tiny_checkpoints, data, tmp_path):
    out = tmp_path / "compression.md"
    compression.main(["--checkpoints", str(tiny_checkpoints), "--data", str(data), "--out", str(out),
                      "--images", "5", "--text-bytes", "2048", "--audio-bytes", "2048", "--mbz-bytes", "0",
                      "--threads", "1"])
    assert "5 of the 8 32x32 images" in out.read_text()


def test_speed_quick_run_writes_every_table_and_the_json_summary(tmp_path, capsys):
    out = tmp_path / "speed.md"
    speed.main(["--quick", "--no-compile", "--json", "--out", str(out)])
    markdown = out.read_text()
    for heading in ("Matmul ceiling", "Training", "Generation", "Scoring"):
        assert f"## {heading}" in markdown
    generation = markdown.split("## Generation")[1].split("## Scoring")[0]
    rows = [line for line in generation.splitlines() if line.startswith("| ") and "batch" not in line]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert names[:5] == ["MegaByte, KV caches in both models, torch's layers",
                         "MegaByte, KV caches, fused C++ step per position",
                         "flat transformer, KV cache, fused C++ step",
                         "MegaByte, whole sequence recomputed every byte",
                         "MegaByte's Linear calls alone (eager, fp32), nothing else"]
    assert names[5].startswith("ceiling: weight reads at")
    for row in rows:  # every cell a positive number of bytes/s
        assert all(float(cell.replace(",", "")) > 0 for cell in row.strip("| ").split(" | ")[1:])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "cores" in summary["machine"] and summary["train_precision"] in ("fp32", "bf16")
    for key in ("eager_torch_batch1", "eager_batch1", "flat_batch1", "ceiling_batch1", "ceiling_batch8", "train_bytes_per_s",
                "score_1mb_seconds", "score_1mb_seconds_before"):
        assert summary[key] > 0, key
    scoring = markdown.split("## Scoring")[1]
    assert scoring.count("| before, fp32, 4 windows |") == 1 and scoring.count("| fast, ") == 1  # one size: 1 MB


def test_matmul_ceiling_is_the_best_size(monkeypatch):
    rates = {256: 80.0, 512: 200.0, 1024: 150.0}
    monkeypatch.setattr(speed, "matmul_gflops", lambda dtype, n, seconds: rates[n])
    assert speed.matmul_ceiling(torch.bfloat16, tuple(rates)) == 200.0


def test_decoding_ceiling_is_set_by_memory_at_batch_1_and_by_compute_when_memory_is_free():
    model = speed.build_model(speed.MEGABYTE)
    weights = speed.weights_used_per_patch(model)
    assert weights == 4 * 12 * 256**2 + 32 * 128 + 8 * (2 * 12 * 128**2 + 128 * 256)  # P=8
    assert speed.decoding_ceiling(model, 1, 40e9, float("inf")) == pytest.approx(8 * 40e9 / (4 * weights))
    assert speed.decoding_ceiling(model, 8, float("inf"), 100e9) == pytest.approx(8 * 8 * 100e9 / (2 * 8 * weights))
    # bf16 weights are half the bytes to read
    assert speed.decoding_ceiling(model, 1, 40e9, float("inf"), 2) == pytest.approx(8 * 40e9 / (2 * weights))


def test_continuation_bench_reports_model_ceiling_and_floor(tiny_checkpoints, tmp_path):
    tunes = [mu_law_tone(hz, 3.5) for hz in (330, 440)]
    folder = tmp_path / "data" / "audio"
    write_split(folder, "val_music", tunes, {"layout": {"sample_rate": 8000}})
    out = tmp_path / "continuation.md"
    continuation.main(["--checkpoints", str(tiny_checkpoints), "--data", str(tmp_path / "data"), "--out", str(out),
                       "--clips", "2", "--threads", "1"])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| audio |")]
    by_row = {cells[2].strip(): [float(c) for c in cells[3:]] for cells in rows}
    assert set(by_row) == {"model", "real next second", "white noise"}
    assert by_row["real next second"][0] < 0.05 < 0.8 < by_row["white noise"][0]   # flatness: tone vs noise
    assert by_row["real next second"][2] > 0.9                                      # a tone continues the tone
    assert "audio: goals" in out.read_text() and "No checkpoint" not in out.read_text()


def test_strided_column_compares_strided_with_plain_scoring_on_the_coded_share(tiny_checkpoints):
    from model.score import strided_score
    model, layout = load_for("text", tiny_checkpoints / "text")
    windows = [bytes(range(256)) * 4]
    row = compression.measure(model, compression.HeldOut("row", "", windows, windows, {}, None), 600)
    assert row.strided == pytest.approx(strided_score(model, windows[0][:600]).bits_per_byte, rel=1e-5)
    cells = read_table(compression.positions_table([row]))["row"]
    assert cells["strided / plain"] == f"{row.strided / (8 * row.coded.estimate / row.coded.original):.3f}×"


def test_context_bench_tables_bins_and_targets(tiny_checkpoints, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "melody").symlink_to(tiny_checkpoints / "audio")  # context 1,024
    (checkpoints / "text").symlink_to(tiny_checkpoints / "text")  # context 512
    for name, layout, size, recall in (("melody_long", {"modality": "audio", "sample_rate": 8000}, 2048, (4, 8)),
                                       ("text_long", {"modality": "text"}, 1024, ())):
        config = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=1, global_heads=1, local_dim=16,
                                local_layers=1, local_heads=1, max_bytes=size, positions="rotary", recall=recall)
        save_checkpoint(checkpoints / name, build_model(config), layout)
    # 3,000 and 1,600 bytes, each a noisy note played five times, sample for sample, as rendered tunes repeat
    tunes = [mu_law_tone(440, 0.075) * 5, mu_law_tone(220, 0.04) * 5]
    write_split(tmp_path / "data" / "melody", "test", tunes, {})
    write_split(tmp_path / "data" / "text_long", "val", [b"In the beginning. " * 70, b"And God said. " * 30], {})
    out = tmp_path / "results" / "context.md"
    context.main(["--checkpoints", str(checkpoints), "--data", str(tmp_path / "data"), "--out", str(out),
                  "--threads", "1"])
    report = out.read_text()
    assert "UTC" in report and "cores" in report and (out.parent / "context.png").is_file()
    assert "Measured" in capsys.readouterr().out  # the machine line is printed
    melody = read_table(report, "## melody: melody test tunes")
    assert list(melody) == ["0", "1", "2–3", "4–7", "8–15", "16–31", "32–63", "64–127", "128–255", "256–511",
                            "512–1,023", "1,024–2,047", "2,048–2,999 (beyond the long context)", "all"]
    assert melody["1,024–2,047"]["bytes"] == "1,600"
    assert melody["2,048–2,999 (beyond the long context)"]["bytes"] == "952"
    assert melody["all"]["bytes"] == "4,600"
    assert list(melody["all"])[2:] == ["short (1,024)", "long (2,048)", "long (2,048) + recall", "xz -9e"]
    # recall spends fewer bits on the notes played again
    assert float(melody["all"]["long (2,048) + recall"].strip("*")) < float(melody["all"]["long (2,048)"].strip("*"))
    short, _ = load_for("audio", checkpoints / "melody")
    whole = sum(score(short, t).surprisal.sum(dtype=np.float64) for t in tunes) / 4600
    assert float(melody["all"]["short (1,024)"].strip("*")) == pytest.approx(whole, abs=0.01)  # bf16 where faster
    text = read_table(report, "## text: held-out long documents")
    assert list(text)[-3:] == ["512–1,023", "1,024–1,259 (beyond the long context)", "all"]
    targets = read_table(report, "## Targets")
    # the long melody checkpoint with its recall, then alone; the long text one has no recall
    assert len(targets) == 7 and all(row["met"] in ("yes", "no") for i, row in enumerate(targets.values()) if i in (0, 1, 3, 4))
    # no document reaches position 8,192: those ratios are not made up
    assert [row["measured"] for i, row in enumerate(targets.values()) if i in (2, 5, 6)] == ["– (no bytes there)"] * 3
    over_xz = targets["melody test tunes scored whole: long (2,048) + recall / xz on each whole tune"]["measured"]
    xz_whole = 8 * sum(len(xz(t)) for t in tunes) / 4600
    assert over_xz.endswith(f" / {xz_whole:.3f} bits per byte)")


def test_xz_with_history_costs_a_repeat_little():
    chunk = rng.integers(0, 256, 1024, dtype=np.uint8).tobytes()
    edges = context.bin_edges(1024, 2048)
    assert edges == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    bits = np.diff(context.xz_bits_before(chunk + chunk, edges))
    assert bits[-1] == 8 * (len(xz(chunk + chunk)) - len(xz(chunk)))  # the second copy, given the first
    assert bits[-2] == 8 * (len(xz(chunk)) - len(xz(chunk[:512])))
    assert bits[-1] / 1024 < 0.5 and bits[-2] / 512 > 7.5  # a repeat is nearly free; noise is not
    assert bits.sum() == 8 * (len(xz(chunk + chunk)) - len(xz(b"")))
    # a document shorter than the last edges stops there
    cut = np.diff(context.xz_bits_before(chunk[:600], edges))
    assert list(cut[-2:]) == [8 * (len(xz(chunk[:600])) - len(xz(chunk[:512]))), 0]
    surprisal = [np.arange(10, dtype=np.float32), np.ones(3, np.float32)]
    assert list(context.model_bits_before(surprisal[0], [0, 1, 2, 4, 8, 16])) == [0, 0, 1, 6, 28, 45]
    assert context.bits_per_byte_between(surprisal, 2) == pytest.approx((sum(range(2, 10)) + 1) / 9)
    assert np.isnan(context.bits_per_byte_between(surprisal, 10))


def test_context_bench_names_the_command_for_missing_data(tiny_checkpoints, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("melody", "melody_long"):
        (checkpoints / name).symlink_to(tiny_checkpoints / "audio")
    with pytest.raises(SystemExit, match=r"`python -m training\.data melody`"):
        context.main(["--checkpoints", str(checkpoints), "--data", str(tmp_path / "nowhere"),
                      "--out", str(tmp_path / "context.md")])


def test_fit_bench_says_how_often_auto_was_right(tiny_checkpoints, tmp_path):
    from bench import fit

    rng = np.random.default_rng(0)
    for folder, split, size in (("image", "val", 2 * 3072), ("melody", "val", 40_000)):
        (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / folder / f"{split}.bin").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    out = tmp_path / "fit.md"
    fit.main(["--checkpoints", str(tiny_checkpoints), "--data", str(tmp_path / "data"), "--out", str(out),
              "--count", "2", "--threads", "1"])
    text = out.read_text()
    photos = next(line for line in text.splitlines() if line.startswith("| photos |"))
    assert photos.split("|")[2].strip() == "2" and photos.split("|")[3].strip() in ("0%", "50%", "100%")
    tunes = next(line for line in text.splitlines() if line.startswith("| tunes |"))
    assert tunes.split("|")[3].strip() == "0%"  # the tiny checkpoints hold no melody model: "audio" is chosen
    assert "not measured" in next(line for line in text.splitlines() if line.startswith("| speech |"))
