"""python -m app: serve the MegaByte studio in the browser."""

import argparse
import logging
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default: %(default)s; byte-at-a-time generation gains little from more)")
    args = parser.parse_args(argv)

    from app import service, ui  # imported here so that --help does not wait for Gradio and torch

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")  # warnings: one line per refused request

    demo = ui.build(args.checkpoints or service.CHECKPOINTS, compile_decoding=True)
    try:
        url = ui.launch(demo, args.host, args.port, args.threads)
    except OSError:
        print(f"Cannot serve on {args.host}:{args.port}: the port is taken or the address is not "
              "this machine's; choose another with --port or --host.", file=sys.stderr)
        return 1
    print(f"MegaByte studio: {url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
