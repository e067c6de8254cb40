"""A local SMTP sink for development and tests: aiosmtpd storing every message in a Maildir.

Run: ``python -m devservers.smtp_sink --port 8025 --maildir var/maildir``.
"""

import argparse
import asyncio
import mailbox
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox


def start(host: str, port: int, maildir: Path) -> Controller:
    for sub in ("tmp", "new", "cur"):  # a Maildir, even in a folder that already exists
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    controller = Controller(Mailbox(str(maildir)), hostname=host, port=port)
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
