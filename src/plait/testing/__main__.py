"""``python -m plait.testing``: serve the simulator until Ctrl-C or SIGTERM.

The first line on stdout is the base URL, printed once the port is listening;
``Simulator.spawn`` waits for exactly that line, so nothing else goes to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from plait.testing._cli import build_parser, options_from_args
from plait.testing.simulator import Simulator


async def serve(options: dict[str, Any]) -> None:
    """Run one simulator on this loop until SIGINT or SIGTERM arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(**options) as sim:
        print(sim.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None, prog: str = "python -m plait.testing") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(options))
    except (OSError, ValueError) as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
