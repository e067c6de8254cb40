"""What every bench command does around its run: a scratch directory for logs, SIGTERM handled as Ctrl-C
(the main task is cancelled, so every finally block tears the installation down), exit 130 on interrupt."""

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

#: A command's run: given the scratch directory, returns the exit status.
Run = Callable[[Path], Awaitable[int]]


async def _in_scratch(run: Run, *, prefix: str, keep: bool) -> int:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    code = 1
    try:
        code = await run(tmp)
    finally:
        if code == 0 and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"process logs are in {tmp / 'log'}", file=sys.stderr)
    return code


def main_of(run: Run, *, prefix: str, keep: bool) -> NoReturn:
    try:
        sys.exit(asyncio.run(_in_scratch(run, prefix=prefix, keep=keep)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process it started was stopped", file=sys.stderr)
        sys.exit(130)


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A bench command's parser: its module docstring (usage lines and what it does) is the help text."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
