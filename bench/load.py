"""A soak test of the app on this machine: `python -m bench.load`.

Starts `python -m app` on a free port of 127.0.0.1, with a temp dir of its own, and waits until
its decoding and scoring are compiled (unless --eager). Sends every request below once, one at a
time: each is timed alone, and the good ones load the checkpoints; then measures the server's
memory: its idle size. Then --clients clients (gradio_client, one thread each) send
requests for --seconds seconds, each waiting for its answer before the next, to every endpoint:
/explore, /compress, /complete_image and /continue_audio, on short inputs (a few hundred bytes
to make or code). One request in five is a bad input: the four crafted .mbz files of issue 21
(a real .mbz from /compress with its header edited), a PNG claiming 12,000×12,000 pixels, a WAV
claiming 96 MHz, absurd numbers, empty files, random bytes.

Each answer is one of: answered; refused in the app's words (an error whose sentence the
server logged as a refusal); or unexplained (any other error, a timeout, a dropped connection:
target 0). Then a plain explore of "hello world" must still answer. Reported: requests per
endpoint and per input, latency, the server's peak memory (its processes together) against its
idle size, the files its requests left in its temp dir, and what is left once it stops.
Writes bench/results/load.md.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import model.compress as mbz
from bench.compression import markdown_table, write_atomically
from bench.provenance import measured_line

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
ENDPOINTS = ("/explore", "/compress", "/complete_image", "/continue_audio")
BAD_EVERY = 5  # one request in five is a bad input
CLIENTS, SECONDS = 12, 300
QUICK_CLIENTS, QUICK_SECONDS = 4, 30
REQUEST_TIMEOUT_SECONDS = 120  # a request unanswered this long counts as unexplained
START_TIMEOUT_SECONDS = 300  # importing torch and Gradio and building the app, on a busy machine
COMPILE_TIMEOUT_SECONDS = 900  # past it, the load starts while the server still compiles, and the report says so
STOP_TIMEOUT_SECONDS = 60
MEMORY_EVERY_SECONDS = 0.2
PLAIN = ("hello world", None, "auto", "auto")  # the request that must still answer at the end
# What the server prints: its address once it serves, and the end of its background compiling.
SERVING = re.compile(r"MegaByte studio: (http://\S+)")
COMPILED = "Compiled decoding and scoring"
REFUSED = re.compile(r" app: refused /\w+: (.*)$")  # the one line the app logs for each refusal
# Torch keeps its compiler's precompiled headers in <temp dir>/torchinductor_<user>, wherever its
# cache is: shared by every process that compiles, and not made by any request.
TORCH_TEMP = "torchinductor_"


class LoadError(Exception):
    """The soak test cannot run: one sentence."""


@dataclass(frozen=True)
class Request:
    what: str  # the input, in a few words
    endpoint: str
    args: tuple  # a Path is uploaded as a file
    bad: bool = False


@dataclass
class Outcome:
    request: Request
    seconds: float
    app_error: str | None = None  # the message of an error the app sent
    failure: str | None = None  # anything else that went wrong: a timeout, a dropped connection

    def verdict(self, refusals: set[str]) -> str:
        if self.failure is None and self.app_error is None:
            return "answered"
        return "refused" if self.app_error in refusals else "unexplained"


# The inputs


def png_bomb() -> bytes:
    """A 17 KB PNG of 12,000×12,000 one-bit pixels, all black: 144 megapixels once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, "PNG")
    return buffer.getvalue()


def wav_at(rate: int) -> bytes:
    """A tenth of a second of silence in a WAV whose header claims `rate` samples a second."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(800, np.int16), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def crafted_mbz(real: bytes) -> dict[str, bytes]:
    """Issue 21's four edited copies of a real .mbz."""
    giant_image = {"modality": "image", "image_size": 100_000, "image_order": "raster"}
    return {
        "600,000,000 bytes of an image of side 100,000": mbz.edited(real, length=600_000_000, layout=giant_image),
        "100,000,000 segments": mbz.edited(real, segments=100_000_000),
        "10^12 adaptation steps": mbz.edited(real, adapt={"steps": 10**12, "lr": 0.1}),
        "64 threads": mbz.edited(real, threads=64),
    }


def image(file: Path, rows=24, samples=1, temperature=1.0, top_k=0, seed=0) -> tuple:
    """/complete_image's arguments: 24 rows kept of a 32×32 image, 8 to make."""
    return file, rows, samples, temperature, top_k, seed


def audio(file: Path, prompt=1.0, new=0.25, temperature=1.0, top_k=0, seed=0) -> tuple:
    """/continue_audio's arguments: a second of prompt, a quarter of a second to make."""
    return file, prompt, new, temperature, top_k, seed


def explore(file: Path) -> tuple:
    """/explore's (and /compress's) arguments for a file, read as what it is, by the default checkpoint."""
    return None, file, "auto", "auto"


def requests(folder: Path, real_mbz: bytes) -> tuple[list[Request], list[Request]]:
    """(good requests, bad ones), with the files they upload written to `folder`."""
    def saved(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    emoji, melody = ASSETS / "emoji" / "twemoji_1f62c.png", ASSETS / "melody" / "piano.flac"
    text = (ASSETS / "text" / "sonnets.txt").read_text()
    real = saved("made_by_compress.mbz", real_mbz)
    bomb, wav = saved("bomb.png", png_bomb()), saved("96MHz.wav", wav_at(96_000_000))
    empty, noise = saved("empty", b""), saved("random.bin", np.random.default_rng(0).bytes(4096))
    not_mbz = saved("random.mbz", mbz.MAGIC + np.random.default_rng(1).bytes(4096))
    good = [
        Request("1,000 bytes of text", "/explore", (text[:1000], None, "auto", "auto")),
        Request("an emoji", "/explore", explore(emoji)),
        Request("a 6 s melody", "/explore", explore(melody)),
        Request("a .mbz made by /compress", "/explore", explore(real)),
        Request("300 bytes of text", "/compress", (text[:300], None, "auto", "auto")),
        Request("an emoji", "/compress", explore(emoji)),
        Request("an emoji, 8 rows to make", "/complete_image", image(emoji)),
        Request("an emoji, 8 rows to make, 2 samples", "/complete_image", image(emoji, samples=2, top_k=40, seed=7)),
        Request("a melody, 0.25 s to make", "/continue_audio", audio(melody)),
    ]
    bad = [Request(f"crafted .mbz: {what}", "/explore", explore(saved(f"crafted{i}.mbz", blob)), bad=True)
           for i, (what, blob) in enumerate(crafted_mbz(real_mbz).items())]
    bad += [Request(what, endpoint, args, bad=True) for what, endpoint, args in [
        (".mbz magic, then random bytes", "/explore", explore(not_mbz)),
        ("PNG claiming 12,000×12,000 pixels", "/explore", explore(bomb)),
        ("PNG claiming 12,000×12,000 pixels", "/complete_image", image(bomb)),
        ("WAV claiming 96 MHz", "/explore", explore(wav)),
        ("WAV claiming 96 MHz", "/continue_audio", audio(wav)),
        ("empty file", "/explore", explore(empty)),
        ("empty file", "/compress", explore(empty)),
        ("empty file", "/complete_image", image(empty)),
        ("empty file", "/continue_audio", audio(empty)),
        ("4 KB of random bytes", "/explore", explore(noise)),
        ("4 KB of random bytes", "/complete_image", image(noise)),
        ("4 KB of random bytes", "/continue_audio", audio(noise)),
        ("-1 s to continue", "/continue_audio", audio(melody, new=-1)),
        ("-5 s of prompt", "/continue_audio", audio(melody, prompt=-5)),
        ("10^9 s to continue", "/continue_audio", audio(melody, new=1e9)),
        ("temperature 1e9", "/continue_audio", audio(melody, temperature=1e9)),
        ("top-k 10^6", "/continue_audio", audio(melody, top_k=10**6)),
        ("10^9 samples", "/complete_image", image(emoji, samples=10**9)),
        ("10^9 rows to keep", "/complete_image", image(emoji, rows=10**9)),
        ("temperature 1e9", "/complete_image", image(emoji, temperature=1e9)),
        ("seed -1", "/complete_image", image(emoji, seed=-1)),
    ]]
    return good, bad


# The server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(log: Path, server: subprocess.Popen, pattern: re.Pattern | str, seconds: float) -> str | None:
    """The first line of the server's log that matches, once it is there; None past `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                return line
        if server.poll() is not None:
            raise LoadError(f"The server stopped with exit status {server.returncode}; its log is {log}.")
        time.sleep(0.5)
    return None


def start_server(checkpoints: Path | None, work: Path, eager: bool) -> subprocess.Popen:
    """`python -m app` with `work`/tmp as its temp dir (Gradio's cache goes in it), its output in
    `work`/server.log. `eager`: it compiles nothing."""
    (work / "tmp").mkdir()
    command = [sys.executable, "-m", "app", "--port", str(free_port())]
    command += ["--checkpoints", str(checkpoints)] if checkpoints else []
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "PYTHONUNBUFFERED": "1"}
    if eager:  # no torch.compile, and no C++ build (nor a wait for another process's, on their shared lock)
        env |= {"TORCH_COMPILE_DISABLE": "1", "CXX": "false", "TORCH_EXTENSIONS_DIR": str(work / "extensions")}
    with open(work / "server.log", "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def serving_url(log: Path, server: subprocess.Popen) -> str:
    line = wait_for_line(log, server, SERVING, START_TIMEOUT_SECONDS)
    if line is None:
        raise LoadError(f"The server did not start serving within {START_TIMEOUT_SECONDS} s; its log is {log}.")
    return SERVING.search(line).group(1)


def stop_server(server: subprocess.Popen) -> int:
    """Stops it as Ctrl+C would (it removes its cache on the way out); kills it if it hangs. Its exit status."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process it started, and they started, from /proc."""
    found = [pid]
    for parent in found:  # grows as it goes
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                found += [int(child) for child in children.read_text().split()]
            except OSError:  # the thread or process has ended
                pass
    return found


def status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS: now, VmHWM: its peak) in MB; 0 for a process gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    return sum(status_mb(p, "VmRSS") for p in process_tree(pid))


class PeakMemory:
    """The most memory the server's processes held together while it watched: sampled every
    MEMORY_EVERY_SECONDS, and the kernel's peak of the server process itself (VmHWM, reset as
    watching starts), which keeps the spikes between samples."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, tree_rss_mb(pid), threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the present size
        except OSError:
            pass  # it stays the peak since start-up: higher, never lower
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self):
        while not self.stop.wait(MEMORY_EVERY_SECONDS):
            self.peak = max(self.peak, tree_rss_mb(self.pid))

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, status_mb(self.pid, "VmHWM"))


def files_under(folder: Path) -> set[Path]:
    return {Path(parent, name) for parent, _, files in os.walk(folder) for name in files}


def request_files(temp: Path) -> set[Path]:
    """The files under the server's temp dir but torch's compiler cache (TORCH_TEMP)."""
    return {path for path in files_under(temp) if not path.relative_to(temp).parts[0].startswith(TORCH_TEMP)}


# The clients


def send(client: Client, request: Request) -> Outcome:
    args = [handle_file(str(arg)) if isinstance(arg, Path) else arg for arg in request.args]
    start = time.perf_counter()
    job = client.submit(*args, api_name=request.endpoint)  # uploads and sends in a thread: result() raises
    try:
        job.result(timeout=REQUEST_TIMEOUT_SECONDS)
        return Outcome(request, time.perf_counter() - start)
    except AppError as e:
        return Outcome(request, time.perf_counter() - start, app_error=str(e))
    except TimeoutError:
        job.cancel()
        return Outcome(request, time.perf_counter() - start, failure=f"no answer in {REQUEST_TIMEOUT_SECONDS} s")
    except Exception as e:  # noqa: BLE001 -- whatever else the client raises is what this test looks for
        job.cancel()
        return Outcome(request, time.perf_counter() - start, failure=f"{type(e).__name__}: {e}".strip())


def run_client(number: int, client: Client, good: list[Request], bad: list[Request], deadline: float,
               outcomes: list[Outcome]):
    """Requests one after another until the deadline; one in BAD_EVERY bad, at a different turn for each client."""
    rng = random.Random(number)
    by_endpoint = {endpoint: [r for r in good if r.endpoint == endpoint] for endpoint in ENDPOINTS}
    sent = 0
    while time.monotonic() < deadline:
        if sent % BAD_EVERY == number % BAD_EVERY:
            request = rng.choice(bad)
        else:
            request = rng.choice(by_endpoint[rng.choice(ENDPOINTS)])
        outcomes.append(send(client, request))
        sent += 1


def new_client(url: str, downloads: Path | None = None) -> Client:
    """A client that waits as long for the server's page as for an answer (httpx's 5 s is too short
    for a server busy compiling), and downloads nothing unless told where."""
    return Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": REQUEST_TIMEOUT_SECONDS},
                  download_files=str(downloads) if downloads else False)


# The report


@dataclass
class Result:
    clients: int
    seconds: float
    alone: list[Outcome]  # each request once, one at a time, before the load
    outcomes: list[Outcome]  # the load's
    refusals: set[str]  # the sentences the server logged as refusals
    compiled: str  # what the server had compiled when the load began, in words
    idle_mb: float
    peak_mb: float
    served_files: int  # made by requests, in the cache at the end (the app keeps each an hour)
    stray_files: list[str]  # elsewhere in the temp dir at the end
    left_files: list[str]  # in the temp dir once the server stopped
    torch_files: int  # torch's compiler cache in the temp dir, not counted above
    plain_seconds: float | None  # the plain explore at the end; None: no answer
    tracebacks: int  # in the server's log

    def count(self, verdict: str, outcomes: list[Outcome]) -> int:
        return sum(o.verdict(self.refusals) == verdict for o in outcomes)

    @property
    def unexplained(self) -> list[Outcome]:
        """Of the requests alone and under load."""
        return [o for o in self.alone + self.outcomes if o.verdict(self.refusals) == "unexplained"]


def percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.2f}" if values else "–"


def endpoint_table(result: Result) -> str:
    def row(label: str, outcomes: list[Outcome]) -> list[str]:
        answered = [o.seconds for o in outcomes if o.verdict(result.refusals) == "answered"]
        return [label, f"{len(outcomes):,}", f"{sum(o.request.bad for o in outcomes):,}", f"{len(answered):,}",
                f"{result.count('refused', outcomes):,}", f"{result.count('unexplained', outcomes):,}",
                percentile(answered, 50), percentile(answered, 95)]

    rows = [row(f"`{endpoint}`", [o for o in result.outcomes if o.request.endpoint == endpoint])
            for endpoint in ENDPOINTS]
    return markdown_table(["endpoint", "requests", "of them bad inputs", "answered", "refused in our words",
                           "unexplained", "p50 s (answered)", "p95 s (answered)"], rows + [row("all", result.outcomes)])


def input_table(result: Result) -> str:
    rows = []
    kinds = dict.fromkeys((o.request.bad, o.request.what, o.request.endpoint) for o in result.outcomes)
    for bad, what, endpoint in sorted(kinds):
        outcomes = [o for o in result.outcomes if (o.request.what, o.request.endpoint) == (what, endpoint)]
        rows.append(["bad" if bad else "good", what, f"`{endpoint}`", f"{len(outcomes):,}",
                     f"{result.count('answered', outcomes):,}", f"{result.count('refused', outcomes):,}",
                     f"{result.count('unexplained', outcomes):,}", f"{max(o.seconds for o in outcomes):.2f}"])
    return markdown_table(["input", "what", "endpoint", "requests", "answered", "refused in our words",
                           "unexplained", "slowest s"], rows)


def alone_table(result: Result) -> str:
    rows = [["bad" if o.request.bad else "good", o.request.what, f"`{o.request.endpoint}`", o.verdict(result.refusals),
             f"{o.seconds:.2f}", (o.failure or o.app_error or "").replace("|", "\\|")] for o in result.alone]
    return markdown_table(["input", "what", "endpoint", "verdict", "seconds", "the error"], rows)


def summary_table(result: Result) -> str:
    plain = "no answer" if result.plain_seconds is None else f"answered in {result.plain_seconds:.2f} s"
    rows = [
        ["requests", f"{len(result.outcomes):,} from {result.clients} clients in {result.seconds:.0f} s", ""],
        ["unexplained errors (alone and under load)", f"{len(result.unexplained):,}", "0"],
        ["tracebacks in the server's log", f"{result.tracebacks:,}", "0"],
        ["server memory, peak (idle)", f"{result.peak_mb:,.0f} MB ({result.idle_mb:,.0f} MB): "
                                      f"+{result.peak_mb - result.idle_mb:,.0f} MB", "within 500 MB of idle"],
        ["files the requests left in the temp dir, outside Gradio's cache", f"{len(result.stray_files):,}", "0"],
        ["files left in the temp dir once the server stopped", f"{len(result.left_files):,}", "0"],
        ["a plain explore of \"hello world\" after the load", plain, "answers, in under 10 s"],
    ]
    return markdown_table(["", "measured", "target"], rows)


def notes(result: Result) -> list[str]:
    lines = [
        f"- The server {result.compiled}. Its idle size was measured after every request above had been sent "
        "once, one at a time: every checkpoint the load uses was loaded.",
        f"- Memory: the resident size of the server's processes together, sampled every {MEMORY_EVERY_SECONDS:g} s, "
        "and the server process's own peak (VmHWM) over the load.",
        f"- Each client waits for its answer before it sends the next; one request in {BAD_EVERY} is a bad input. "
        f"A request unanswered after {REQUEST_TIMEOUT_SECONDS} s counts as unexplained. *Refused in our words*: an "
        "error whose sentence the server logged as a refusal (`app: refused /endpoint: ...`).",
        f"- Gradio's cache held {result.served_files:,} files made by the requests at the end: outputs and uploads, "
        "which the app keeps an hour for their downloads and then sweeps.",
    ]
    if result.torch_files:
        lines.append(f"- Not counted: {result.torch_files} files of torch's compiler in `{TORCH_TEMP}<user>/` in the "
                     "temp dir (precompiled headers, which torch keeps there whatever its cache dir).")
    if result.unexplained:
        lines.append("- Unexplained: " + "; ".join(sorted({f"{o.request.endpoint} {o.request.what}: "
                                                          f"{o.failure or o.app_error}" for o in result.unexplained})))
    for name, files in (("outside the cache", result.stray_files), ("after the stop", result.left_files)):
        if files:
            lines.append(f"- Files {name}: " + ", ".join(sorted(files)[:10]))
    return lines


def report(result: Result, machine: str, served: str) -> str:
    return "\n".join([
        "# Load: many clients, every endpoint, one request in five a bad input",
        "",
        machine,
        "",
        summary_table(result),
        "",
        "## Each request alone",
        "",
        "Before the load, one request after another; the first of each kind loads its checkpoint.",
        "",
        alone_table(result),
        "",
        "## Under load, per endpoint",
        "",
        endpoint_table(result),
        "",
        "## Under load, per input",
        "",
        input_table(result),
        "",
        "## What was measured",
        "",
        f"- Checkpoints: {served}.",
        *notes(result),
    ]) + "\n"


# The run


def one_at_a_time(url: str, requests: list[Request]) -> list[Outcome]:
    """Every request once, one after another: each timed alone, and every checkpoint the load uses loaded."""
    client = new_client(url)
    return [send(client, request) for request in requests]


def real_mbz(url: str, downloads: Path) -> bytes:
    """A .mbz made through /compress, as the attacker of issue 21 made theirs."""
    text = (ASSETS / "text" / "genesis.txt").read_text()[:600]
    _, path = new_client(url, downloads).predict(text, None, "auto", "auto", api_name="/compress")
    return Path(path).read_bytes()


def soak(checkpoints: Path | None, clients: int, seconds: float, eager: bool, work: Path) -> Result:
    temp, log = work / "tmp", work / "server.log"
    server = start_server(checkpoints, work, eager)
    try:
        url = serving_url(log, server)
        if eager:
            compiled = "compiled nothing (`--eager`): every request ran eagerly"
        elif wait_for_line(log, server, COMPILED, COMPILE_TIMEOUT_SECONDS):
            compiled = "had compiled its decoding and scoring when the load began"
        else:
            compiled = f"was still compiling when the load began (it had not finished in {COMPILE_TIMEOUT_SECONDS} s)"
        print(f"Serving on {url}; it {compiled}. Each request alone first.", file=sys.stderr)
        (work / "files").mkdir()
        good, bad = requests(work / "files", real_mbz(url, work / "downloads"))
        alone = one_at_a_time(url, good + bad)
        idle_mb = tree_rss_mb(server.pid)
        before = request_files(temp)
        memory = PeakMemory(server.pid)
        print(f"{clients} clients for {seconds:g} s.", file=sys.stderr)
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=run_client, args=(n, new_client(url), good, bad, deadline, outcomes))
                   for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak_mb = memory.done()
        plain = send(new_client(url), Request("hello world", "/explore", PLAIN))
        cache = next(temp.glob("megabyte-studio-*"))
        now = request_files(temp)
        served_files = len([path for path in now - before if cache in path.parents])
        stray_files = [str(path.relative_to(temp)) for path in now if cache not in path.parents]
    finally:
        stop_server(server)
    text, left = log.read_text(errors="replace"), request_files(temp)
    return Result(
        clients=clients, seconds=seconds, alone=alone, outcomes=outcomes,
        refusals={m.group(1) for m in map(REFUSED.search, text.splitlines()) if m}, compiled=compiled,
        idle_mb=idle_mb, peak_mb=peak_mb, served_files=served_files, stray_files=stray_files,
        left_files=sorted(str(path.relative_to(temp)) for path in left), torch_files=len(files_under(temp) - left),
        plain_seconds=None if plain.failure or plain.app_error else plain.seconds,
        tracebacks=text.count("Traceback (most recent call last)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="the folder of checkpoints the app serves (default: the shipped checkpoints/)")
    parser.add_argument("--clients", type=int, default=None,
                        help=f"clients sending requests at once (default: {CLIENTS}; {QUICK_CLIENTS} with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"how long they send (default: {SECONDS:g}; {QUICK_SECONDS} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CLIENTS} clients for {QUICK_SECONDS} s")
    parser.add_argument("--eager", action="store_true",
                        help="the server compiles nothing (no torch.compile, no fused C++ step): requests run as "
                             "they do before its compiling is done; for tests on a busy machine")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"),
                        help="the Markdown file to write (default: bench/results/load.md)")
    return parser


def main(argv=None) -> Result:
    args = build_parser().parse_args(argv)
    clients = args.clients if args.clients is not None else QUICK_CLIENTS if args.quick else CLIENTS
    seconds = args.seconds if args.seconds is not None else QUICK_SECONDS if args.quick else SECONDS
    if clients < 1 or seconds < 1:
        sys.exit("bench.load: --clients and --seconds must be at least 1.")
    if args.checkpoints and not args.checkpoints.is_dir():
        sys.exit(f"bench.load: there is no folder {args.checkpoints}.")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        result = soak(args.checkpoints, clients, seconds, args.eager, work)
    except LoadError as e:
        sys.exit(f"bench.load: {e}")
    machine = measured_line("bench.load", started, time.perf_counter() - clock, argv)
    served = args.checkpoints or ROOT / "checkpoints"
    names = ", ".join(sorted(folder.name for folder in served.iterdir() if (folder / "config.json").is_file()))
    write_atomically(args.out, report(result, machine, f"`{args.checkpoints or 'checkpoints'}` ({names})"))
    print(machine, summary_table(result), endpoint_table(result), sep="\n\n")
    if result.unexplained or result.tracebacks:
        print(f"The server's log and the inputs stay in {work} for a look.", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
