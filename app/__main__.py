"""python -m app: serve the MegaByte studio in the browser."""

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve the MegaByte studio: complete an image, continue an audio clip, "
                    "see the model's surprisal at every byte of a text or file.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="folder holding the text/, image/ and audio/ checkpoints (default: the shipped checkpoints/)")
    args = parser.parse_args(argv)

    # Gradio's cache in a folder of this process's own, removed when it exits (a stop by SIGTERM
    # too): the app sweeps it for old files, which it must not do where other apps keep theirs.
    cache = tempfile.mkdtemp(prefix="megabyte-studio-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = cache
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    from app import service, ui  # imported here so that --help does not wait for Gradio and torch

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")  # warnings: one line per refused request

    checkpoints = args.checkpoints or service.CHECKPOINTS
    service.use_compile_cache()  # before any thread compiles
    demo = ui.build(checkpoints)
    try:
        url = ui.launch(demo, args.host, args.port)  # which fixes torch's thread count
    except OSError:
        print(f"Cannot serve on {args.host}:{args.port}: the port is taken or the address is not "
              "this machine's; choose another with --port or --host.", file=sys.stderr)
        return 1
    service.compile_in_background(checkpoints)  # the fused step first, then compiled steps; it says when each is ready
    print(f"MegaByte studio: {url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
