"""Run the service with uvicorn: `python -m service [--host H] [--port P]`."""

from __future__ import annotations

import argparse

import uvicorn


def main() -> None:
    """Parse the command line and serve `service.main:app`."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the aexad API; the other settings come from AEXAD_* environment variables.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    arguments = parser.parse_args()
    # One worker process: the models and the CodeCarbon tracker live in it.
    uvicorn.run("service.main:app", host=arguments.host, port=arguments.port, workers=1)


if __name__ == "__main__":
    main()
