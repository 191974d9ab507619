"""The command line as a user runs it, on the demo assets, with tiny random checkpoints.

Successful runs go through a real `python -m app.cli` process; the many ways to get
an input wrong go through main() in this process, which is the same code and much
quicker than starting torch again for each.
"""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from adapters import Layout, audio, image
from app import cli, service
from model import generate, read_config
from model.best_of import chunked_best_of

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
LAYOUTS = {
    "text": Layout("text"),
    "image": Layout("image", image_size=32, patch_size=4),
    "audio": Layout("audio", sample_rate=8000),
}


def run_cli(*args) -> subprocess.CompletedProcess:
    # One torch thread: on a machine busy with training, a pool of threads waiting on each other crawls.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def succeeds(*args) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def audio_length_at(rate: int, path: Path) -> int:
    info = sf.info(path)
    return round(info.frames * rate / info.samplerate)


@pytest.mark.parametrize("modality, name, encoded_length", [
    ("text", "text/genesis.txt", (ASSETS / "text/genesis.txt").stat().st_size),
    ("bytes", "audio/ambi_piano.flac", (ASSETS / "audio/ambi_piano.flac").stat().st_size),
    ("image", "images/astronaut.png", 32 * 32 * 3),
    ("audio", "audio/ambi_choir.flac", audio_length_at(8000, ASSETS / "audio/ambi_choir.flac")),
])
def test_score_json_reports_the_encoded_bytes(tiny_checkpoints, modality, name, encoded_length):
    folder = tiny_checkpoints / ("text" if modality == "bytes" else modality)
    report = json.loads(succeeds("score", ASSETS / name, "--modality", modality, "--checkpoint", folder, "--json"))
    assert report["modality"] == modality and report["checkpoint"] == str(folder)
    assert report["bytes"] == encoded_length
    assert 0 < report["bits_per_byte"] < 16 and report["seconds"] > 0
    assert 0 < report["gzip_bits_per_byte"] < 16 and 0 < report["xz_bits_per_byte"] < 16
    assert "surprisal" not in report


def test_score_per_byte_and_summary(tiny_checkpoints):
    text = ASSETS / "text/sonnets.txt"
    args = ("score", text, "--modality", "text", "--checkpoint", tiny_checkpoints / "text")
    report = json.loads(succeeds(*args, "--json", "--per-byte"))
    surprisal = np.array(report["surprisal"])
    assert len(surprisal) == report["bytes"] == text.stat().st_size
    assert surprisal.mean() == pytest.approx(report["bits_per_byte"], abs=1e-3)
    patch_size = read_config(tiny_checkpoints / "text")["model"]["patch_size"]
    assert len(report["patch_surprisal"]) == -(-report["bytes"] // patch_size)
    summary = succeeds(*args).splitlines()  # for people: a few lines, the numbers and the spots
    assert len(summary) < 10
    assert "bits per byte" in summary[1] and any("gzip" in line for line in summary)
    assert any(line.strip().startswith("bytes ") for line in summary)  # where the surprises are


def test_generate_text_adds_the_asked_bytes(tiny_checkpoints, tmp_path):
    out = tmp_path / "out.txt"
    succeeds("generate", "text", "--prompt", "In the beginning", "--bytes", 40, "--out", out,
             "--checkpoint", tiny_checkpoints / "text", "--seed", 1)
    written = out.read_bytes()
    assert len(written) == len("In the beginning") + 40 and written.startswith(b"In the beginning")


@pytest.mark.slow
def test_compile_flag_compiles_and_gives_the_same_text(tiny_checkpoints, tmp_path, monkeypatch):
    outputs, compiled_code = [], []
    for flags in ([], ["--compile"]):
        out, code_cache = tmp_path / f"out{len(flags)}.txt", tmp_path / f"inductor{len(flags)}"
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(code_cache))
        succeeds("generate", "text", "--prompt", "In the beginning", "--bytes", 40, "--out", out,
                 "--checkpoint", tiny_checkpoints / "text", "--temperature", 0, *flags)
        outputs.append(out.read_bytes())
        compiled_code.append(code_cache.exists() and any(code_cache.iterdir()))
    assert compiled_code == [False, True]
    assert outputs[0] == outputs[1] and len(outputs[0]) == len("In the beginning") + 40


def test_generate_image_keeps_the_top_rows(tiny_checkpoints, tmp_path):
    source, rows = ASSETS / "images/astronaut.png", 24
    succeeds("generate", "image", source, "--rows", rows, "--samples", 2, "--out", tmp_path / "done.png",
             "--checkpoint", tiny_checkpoints / "image", "--top-k", 50)
    original = np.asarray(image.load(source, LAYOUTS["image"]))
    for number in (1, 2):
        completed = Image.open(tmp_path / f"done_{number}.png")
        assert completed.format == "PNG" and completed.size == (32, 32) and completed.mode == "RGB"
        assert np.array_equal(np.asarray(completed)[:rows], original[:rows])
    assert not (tmp_path / "done.png").exists()


def test_generate_audio_writes_prompt_and_continuation(tiny_checkpoints, tmp_path):
    source, out, layout = ASSETS / "audio/ambi_choir.flac", tmp_path / "more.wav", LAYOUTS["audio"]
    succeeds("generate", "audio", source, "--prompt-seconds", 0.5, "--seconds", 0.1, "--out", out,
             "--checkpoint", tiny_checkpoints / "audio", "--temperature", 0.8)
    pcm, rate = sf.read(out, dtype="int16")
    assert sf.info(out).format == "WAV" and rate == 8000 and len(pcm) == 4000 + 800
    prompt = audio.decode(audio.encode(audio.load(source, layout, max_seconds=0.5), layout), layout)
    assert np.array_equal(pcm[:4000], prompt)


def test_generate_audio_is_steered_unless_told_not_to(tiny_checkpoints, tmp_path, capsys):
    source, folder, layout = ASSETS / "audio/ambi_choir.flac", tiny_checkpoints / "audio", LAYOUTS["audio"]
    model, _ = service.load(folder)
    prompt = audio.encode(audio.load(source, layout, max_seconds=0.5), layout)
    steered = b"".join(chunked_best_of(model, prompt, 800, *audio.STEERING.plan(prompt, layout, audio.DEFAULT_SAMPLING)))
    plain = generate(model, prompt, 800, 1, audio.DEFAULT_SAMPLING)[0]
    for flags, made, steered_said in (([], steered, True), (["--no-steer"], plain, False)):
        out = tmp_path / f"{len(flags)}.wav"
        cli.main(["generate", "audio", str(source), "--prompt-seconds", "0.5", "--seconds", "0.1", "--out", str(out),
                  "--checkpoint", str(folder), *flags])
        assert np.array_equal(sf.read(out, dtype="int16")[0][4000:], audio.decode(made, layout))
        assert (audio.STEERING.name in capsys.readouterr().err) == steered_said


def test_generate_audio_takes_a_prompt_as_long_as_the_context_holds(served_checkpoints, tmp_path, capsys):
    source, out, long_model = ASSETS / "audio/guit_em9.flac", tmp_path / "more.wav", served_checkpoints / "audio_long"
    succeeds("generate", "audio", source, "--prompt-seconds", 8, "--seconds", 0.01, "--out", out,
             "--checkpoint", long_model)  # 64,000 bytes of its 65,536
    assert len(sf.read(out, dtype="int16")[0]) == 64_000 + 80
    with pytest.raises(SystemExit):
        cli.main(["generate", "audio", str(source), "--prompt-seconds", "9", "--checkpoint", str(long_model)])
    assert capsys.readouterr().err == "error: Prompt seconds: at most 8.\n"


def test_generate_defaults_to_the_checkpoint_least_surprised_by_the_input(served_checkpoints, tmp_path, capsys):
    photo, clip = ASSETS / "images/astronaut.png", ASSETS / "audio/guit_em9.flac"
    done = run_cli("generate", "image", photo, "--checkpoints", served_checkpoints, "--out", tmp_path / "auto.png")
    assert done.returncode == 0, done.stderr
    chosen = service.choose_checkpoint(photo, "image", [served_checkpoints / "emoji", served_checkpoints / "image"])
    ranking = " · ".join(f"{fit.folder.name} {fit.bits_per_byte:.2f}" for fit in chosen.fits)
    assert re.search(rf"^auto: {ranking} bits per subpixel: completed with {chosen.folder.name} "
                     r"\(chosen in \d+\.\d s\)$", done.stderr, re.M), done.stderr
    cli.main(["generate", "audio", str(clip), "--checkpoints", str(served_checkpoints), "--prompt-seconds", "6",
              "--seconds", "0.01", "--out", str(tmp_path / "auto.wav")])  # only audio_long's context takes 6 s
    assert "continued with audio_long (chosen in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "audio", str(clip), "--checkpoints", str(served_checkpoints), "--prompt-seconds", "9"])
    assert capsys.readouterr().err == "error: Prompt seconds: at most 8.\n"  # the longest context's


def ogg_crc(page: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, starting at 0."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_score_accepts_an_ogg_without_end_of_stream_flag(tiny_checkpoints, tmp_path):
    """Tux Paint's clips end this way; libsndfile decodes them whole, so they are not truncated."""
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)
    sf.write(buffer, tone, 8000, format="OGG", subtype="VORBIS")
    data = bytearray(buffer.getvalue())
    last_page = data.rfind(b"OggS")
    data[last_page + 5] &= ~0x04  # header type: clear end of stream
    data[last_page + 22 : last_page + 26] = bytes(4)  # the checksum is computed with its own field zeroed
    data[last_page + 22 : last_page + 26] = ogg_crc(data[last_page:]).to_bytes(4, "little")
    clip = tmp_path / "clip.ogg"
    clip.write_bytes(data)
    report = json.loads(succeeds("score", clip, "--modality", "audio", "--checkpoint", tiny_checkpoints / "audio", "--json"))
    assert report["bytes"] == 8000


def test_a_real_process_reports_bad_input_in_one_line(tmp_path):
    done = run_cli("score", tmp_path / "missing.txt", "--modality", "text", "--checkpoint", tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")


def test_a_wrong_argument_shows_the_usage_line(tmp_path):
    done = run_cli("score", tmp_path / "a.txt", "--modality", "video")
    assert done.returncode == 2 and done.stderr.startswith("usage: python -m app.cli score")
    assert done.stderr.splitlines()[-1].startswith("error: argument --modality: invalid choice: 'video'")


def test_an_unwritable_out_is_refused_before_any_work(tmp_path):
    # The checkpoint folder does not exist either: refusing --out first means nothing was loaded or made.
    done = run_cli("generate", "image", ASSETS / "images/astronaut.png", "--out", tmp_path / "missing/x.png",
                   "--checkpoint", tmp_path / "no-checkpoint")
    assert done.returncode == 1
    assert done.stderr == f"error: Cannot write {tmp_path / 'missing/x.png'}: there is no folder {tmp_path / 'missing'}.\n"


def test_score_several_files_prints_one_json_line_each(tiny_checkpoints):
    files = [ASSETS / "images/astronaut.png", ASSETS / "images/coffee.png"]
    lines = succeeds("score", *files, "--modality", "image", "--checkpoint", tiny_checkpoints / "image",
                     "--json").splitlines()
    reports = [json.loads(line) for line in lines]
    assert [report["file"] for report in reports] == [str(f) for f in files]
    assert all(report["bytes"] == 32 * 32 * 3 and report["bits_per_byte"] > 0 for report in reports)


def test_score_loads_the_model_once_for_all_files(tiny_checkpoints, monkeypatch, capsys):
    loads = []
    load_for = cli.service.load_for
    monkeypatch.setattr(cli.service, "load_for", lambda *args: loads.append(args) or load_for(*args))
    cli.main(["score", str(ASSETS / "text/genesis.txt"), str(ASSETS / "text/sonnets.txt"), "--modality", "text",
              "--checkpoint", str(tiny_checkpoints / "text"), "--json"])
    assert len(loads) == 1 and len(capsys.readouterr().out.splitlines()) == 2


def bad_inputs(assets, folder, tmp):
    """(arguments, a word the message must contain) for the mistakes a user is likely to make."""
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "cut.png").write_bytes((assets / "images/astronaut.png").read_bytes()[:20000])
    text_model, image_model, audio_model = (("--checkpoint", folder / name) for name in ("text", "image", "audio"))
    astronaut, choir = assets / "images/astronaut.png", assets / "audio/ambi_choir.flac"
    return [
        (["score", tmp / "missing.txt", "--modality", "text", *text_model], "no file"),
        (["score", tmp / "empty.txt", "--modality", "bytes", *text_model], "empty"),
        (["score", tmp / "cut.png", "--modality", "image", *image_model], "truncated"),
        (["score", assets / "text/genesis.txt", "--modality", "image", *image_model], "image"),
        (["score", astronaut, "--modality", "audio", *audio_model], "audio"),
        (["score", astronaut, "--modality", "image", *text_model], "trained on text"),
        (["score", astronaut, "--modality", "image", "--checkpoint", tmp], "checkpoint"),
        (["score", astronaut, "--modality", "video", *image_model], "modality"),
        (["score", assets / "text/genesis.txt", "--modality", "text", "--max-bytes", 100, *text_model],
         "over the limit of 100; pass --max-bytes"),
        (["generate", "text", "--prompt", "x", "--samples", 0, *text_model], "Samples: at least 1."),
        (["generate", "text", "--prompt", "x", "--samples", 9, *text_model], "Samples: at most 8."),
        (["generate", "text", "--prompt", "x", "--temperature", -1, *text_model], "Temperature: at least 0."),
        (["generate", "text", "--prompt", "x", "--top-p", 0, *text_model], "op_p"),
        (["generate", "text", "--prompt", "x", "--bytes", 0, *text_model], "byte"),
        (["generate", "text", "--prompt", "x", "--seed", 2**64, *text_model], "Seed: at most 2,147,483,647."),
        (["generate", "text", "--prompt", "x", "--seed", "abc", *text_model], "Seed: a whole number from 0"),
        (["generate", "image", astronaut, "--rows", 32, *image_model], "Top rows to keep: at most 31."),
        (["generate", "image", astronaut, "--rows", 0, *image_model], "Top rows to keep: at least 1."),
        (["generate", "audio", choir, "--seconds", -1, *audio_model], "seconds"),
        (["generate", "audio", choir, "--prompt-seconds", 6, *audio_model], "Prompt seconds: at most 5."),
        (["generate", "audio", choir, "--seconds", 0.01, "--out", tmp / "no/such/dir.wav", *audio_model], "write"),
    ]


def test_bad_input_gives_one_sentence_and_a_nonzero_exit(tiny_checkpoints, tmp_path, capsys):
    for args, word in bad_inputs(ASSETS, tiny_checkpoints, tmp_path):
        with pytest.raises(SystemExit) as stopped:
            cli.main([str(a) for a in args])
        *usage, error = capsys.readouterr().err.splitlines()
        assert stopped.value.code != 0, args
        assert error.startswith("error: ") and word in error, (args, error)
        if stopped.value.code == 2:  # a mistake in the arguments: the usage line comes first
            assert usage[0].startswith("usage: python -m app.cli"), (args, usage)
        else:
            assert not usage, (args, usage)
