"""A local SMTP sink for development and tests: aiosmtpd storing every message in a Maildir.

Run: ``python -m devservers.smtp_sink --port 8025 --maildir var/maildir``.
"""

import argparse
import asyncio
import itertools
import mailbox
import os
import socket
import time
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox


class UnsyncedMailbox(Mailbox):
    """aiosmtpd's Maildir handler without an fsync per message. A development sink needs no durability across a
    crash of the machine, and under load the fsync was a third of the sink's CPU (docs/benchmarks.md). The
    delivery is still Maildir's: written under tmp/, then renamed into new/, so a reader never sees half a
    message."""

    _counter = itertools.count()

    def handle_message(self, message: Message) -> None:
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._counter)}.{socket.gethostname()}"
        tmp = Path(self.mail_dir) / "tmp" / name
        tmp.write_bytes(message.as_bytes())
        os.rename(tmp, Path(self.mail_dir) / "new" / name)


def start(host: str, port: int, maildir: Path) -> Controller:
    for sub in ("tmp", "new", "cur"):  # a Maildir, even in a folder that already exists
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    controller = Controller(UnsyncedMailbox(str(maildir)), hostname=host, port=port)
    controller.start()
    return controller


def messages(maildir: Path) -> list[mailbox.MaildirMessage]:
    if not maildir.exists():
        return []
    return list(mailbox.Maildir(str(maildir), create=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", type=Path, default=Path("var/maildir"))
    args = parser.parse_args()
    controller = start(args.host, args.port, args.maildir)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
