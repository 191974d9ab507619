"""Data recipes: real sources become byte caches with a clean validation split."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data as cli
from training.recipes import common
from training.recipes.common import CacheWriter, DataError, choose_validation
from training.recipes.text import build_text, split_bible_books, stdlib_files


def _read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    """The text recipe, end to end, on a tiny subset of the interpreter's own
    standard library (always present, no network)."""
    base = tmp_path_factory.mktemp("text")
    out = base / "text"
    manifest = build_text(out, tiny=True, sources=["stdlib"], downloads=base / "dl", progress=False)
    return out, manifest


def test_text_recipe_writes_nonempty_cache_and_manifest(tiny_text):
    out, manifest = tiny_text
    for name in ("train.bin", "val.bin", "manifest.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["modality"] == "text"
    assert on_disk["splits"]["train"]["bytes"] == (out / "train.bin").stat().st_size
    assert on_disk["splits"]["val"]["bytes"] == (out / "val.bin").stat().st_size
    # no prose source was asked for, so there is no prose validation file
    assert not (out / "val_prose.bin").exists()
    # nothing half-written is left behind
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_text_validation_files_are_disjoint_from_training(tiny_text):
    out, manifest = tiny_text
    train = {f["path"] for f in manifest["files"]["train"]}
    val = {f["path"] for f in manifest["files"]["val"]}
    assert train and val
    assert not train & val
    [src] = manifest["sources"]
    assert set(src["validation_files"]) == val


def test_text_cache_holds_the_real_files_whole(tiny_text):
    out, manifest = tiny_text
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for split in ("train", "val"):
        blob = _read(out / f"{split}.bin")
        for entry in manifest["files"][split]:
            chunk = blob[entry["offset"]: entry["offset"] + entry["bytes"]]
            source = (stdlib / entry["path"].split("/", 1)[1]).read_bytes()
            # tiny mode keeps the first 20 kB of each file; documents end with a blank line
            assert chunk.endswith(b"\n\n")
            assert source.strip(b"\r\n").startswith(chunk[:-2])
        assert sum(e["bytes"] for e in manifest["files"][split]) == len(blob)


def test_text_recipe_is_deterministic(tiny_text, tmp_path):
    out, manifest = tiny_text
    again = build_text(tmp_path / "again", tiny=True, sources=["stdlib"],
                       downloads=tmp_path / "dl", progress=False)
    assert again["files"] == manifest["files"]
    assert _read(tmp_path / "again" / "train.bin") == _read(out / "train.bin")


def test_stdlib_source_skips_tests_and_site_packages():
    files = stdlib_files()
    assert files
    for f in files:
        parts = set(f.parts)
        assert not parts & {"test", "tests", "idle_test", "site-packages"}, f
        assert f.suffix == ".py"


def test_cli_runs_and_reports(tmp_path, capsys):
    rc = cli.main(["text", "--tiny", "--sources", "stdlib", "--out", str(tmp_path / "t"),
                   "--downloads", str(tmp_path / "dl"), "--quiet"])
    assert rc == 0
    assert "train:" in capsys.readouterr().out
    assert (tmp_path / "t" / "train.bin").stat().st_size > 0


def test_cli_unknown_source_is_one_clear_sentence(tmp_path, capsys):
    rc = cli.main(["text", "--sources", "nonsense", "--out", str(tmp_path / "t"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "nonsense" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_cli_help_lists_the_modalities(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for kind in ("text", "image", "audio"):
        assert kind in out


def test_missing_tool_is_a_data_error_not_a_traceback():
    with pytest.raises(DataError, match="not installed"):
        common.run_tool(["surely-not-a-real-tool-xyz", "--version"], what="test")


def test_failed_write_leaves_old_cache_untouched(tmp_path):
    with CacheWriter(tmp_path, ["train", "val"]) as w:
        w.add("train", b"old train")
        w.add("val", b"old val")
        w.commit({"v": 1})
    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path, ["train", "val"]) as w:
            w.add("train", b"new")
            raise RuntimeError("interrupted")
    assert (tmp_path / "train.bin").read_bytes() == b"old train"
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train.bin", "val.bin"]


def test_empty_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="empty"):
        with CacheWriter(tmp_path, ["train", "val"]) as w:
            w.add("train", b"x")
            w.commit({})
    assert not list(tmp_path.iterdir())


def test_validation_choice_is_seeded_and_holds_forced_files():
    names = [f"f{i:03d}" for i in range(100)]
    a = choose_validation(names, seed=0, source="s", forced=["f007"])
    b = choose_validation(list(reversed(names)), seed=0, source="s", forced=["f007"])
    c = choose_validation(names, seed=1, source="s", forced=["f007"])
    assert a == b and "f007" in a and a != c
    assert 3 <= len(a) <= 6
    assert choose_validation(["only"], seed=0, source="s") == set()


def test_bible_is_split_into_whole_books():
    text = (b"\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
            b"\nGenesis 2\n\n  1 Thus the heavens and the earth were finished.\n"
            b"\n1 Samuel 1\n\n  1 Now there was a certain man.\n")
    books = split_bible_books(text)
    assert [b for b, _ in books] == ["Genesis", "1 Samuel"]
    assert b"Genesis 2" in books[0][1] and books[1][1].startswith(b"1 Samuel 1")


def test_image_crops_are_3072_bytes_in_raster_order():
    from training.recipes.image import make_encoder, random_crops
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    crops = random_crops(photo, 5, np.random.default_rng(1))
    encode, layout, _ = make_encoder("raster", 16)
    assert layout["image_size"] == 32 and layout["image_order"] == "raster"
    for c in crops:
        assert c.size == (32, 32)
        data = encode(c)
        assert len(data) == 32 * 32 * 3
        assert data == np.asarray(c, dtype=np.uint8).tobytes()   # rows, pixels, R G B


@pytest.mark.network
def test_image_recipe_tiny_end_to_end(tmp_path):
    """Downloads scikit-image's wheel (about 14 MB) from PyPI."""
    from training.recipes.image import build_image
    out = tmp_path / "image"
    m = build_image(out, tiny=True, downloads=tmp_path / "dl", progress=False)
    assert (out / "train.bin").stat().st_size == 3072 * m["splits"]["train"]["examples"]
    assert (out / "val.bin").stat().st_size == 3072 * m["splits"]["val"]["examples"]
    train = {r["path"] for r in m["files"]["train"]}
    val = {r["path"] for r in m["files"]["val"]}
    assert train and val and not train & val
    assert "skimage/coffee.png" in val          # demo photos are never trained on


@pytest.mark.network
def test_audio_recipe_tiny_end_to_end(tmp_path):
    """Downloads two Debian packages (about 60 MB)."""
    from training.recipes.audio import build_audio
    out = tmp_path / "audio"
    m = build_audio(out, tiny=True, downloads=tmp_path / "dl", progress=False)
    for name in ("train.bin", "val.bin", "val_music.bin", "val_speech.bin", "manifest.json"):
        assert (out / name).stat().st_size > 0, name
    train = {r["path"] for r in m["files"]["train"]}
    val = {r["path"] for r in m["files"]["val"]}
    assert train and val and not train & val
    assert not any("ambi_piano" in p or "loop_amen" in p for p in train)


def test_a_held_out_near_copy_moves_to_training():
    from training.recipes.text import Doc, move_near_copies
    shared = b"".join(b"line %d of a codec table that repeats\n" % i for i in range(50))
    loaded = {"t/a": shared + b"a line only training has\n", "v/copy": shared[:-40] + b"one new line here\n",
              "v/own": b"".join(b"a held-out line of its own %d\n" % i for i in range(50))}
    docs = {name: Doc(name.split("/")[0], name, lambda: b"") for name in loaded}
    moved = move_near_copies([docs["t/a"]], [docs["v/copy"], docs["v/own"]], loaded)
    assert moved == {"v/copy"}


def test_long_files_become_sections_cut_at_blank_lines_and_prose_is_capped_at_a_line():
    from training.recipes.text import cut_at_line, sections
    text = b"".join(b"paragraph %d, a line of prose.\n\n" % i for i in range(5000))
    parts = sections(text, size=10_000)
    assert b"".join(parts) == text and len(parts) > 10
    assert all(p.endswith(b"\n\n") for p in parts) and max(map(len, parts)) < 10_100
    cut = cut_at_line(text, 1000)
    assert len(cut) <= 1000 and cut.endswith(b"\n") and text.startswith(cut)


def test_emoji_split_is_by_emoji_and_skin_tones_are_left_out():
    from training.recipes.common import hashed_split as split_of
    from training.recipes.emoji import has_skin_tone
    assert has_skin_tone(Path("1f44d-1f3fb.png")) and has_skin_tone(Path("1F469-1F3FD-200D-1F4BB.svg"))
    assert not has_skin_tone(Path("1f44d.png"))
    splits = [split_of(f"{code:x}", seed=0) for code in range(0x1f300, 0x1f700)]
    assert {s: splits.count(s) / len(splits) for s in ("val", "test")} == pytest.approx({"val": 0.05, "test": 0.05}, abs=0.02)
    assert split_of("1f600", 0) == split_of("1f600", 0)  # a function of the emoji alone: both styles agree


@pytest.mark.slow
@pytest.mark.network
def test_melody_recipe_renders_tunes_split_by_tune(tmp_path):
    """Needs music21 and fluidsynth with the FluidR3 SoundFont (the recipe installs the Debian packages)."""
    pytest.importorskip("music21")
    from training.recipes.melody import build_melody
    manifest = build_melody(tmp_path / "melody", tiny=True, progress=False)
    tunes = {split: {f["tune"] for f in manifest["files"][split]} for split in ("train", "val", "test")}
    assert all(tunes.values()) and not (tunes["train"] & tunes["test"]) and not (tunes["train"] & tunes["val"])
    data = (tmp_path / "melody" / "test.bin").read_bytes()
    first = manifest["files"]["test"][0]
    clip = np.frombuffer(data[first["offset"] : first["offset"] + first["bytes"]], np.uint8)
    assert first["bytes"] > 8000 and len(np.unique(clip)) > 50  # seconds of real, varied µ-law audio
