"""What DATA writes for a message: the same transformation aiosmtplib applies, kept in the pool since the pool
writes DATA in two halves (services/notify/smtp_pool.py)."""

import pytest

from services.notify.smtp_pool import data_bytes


@pytest.mark.parametrize(
    ("content", "written"),
    [
        (b"Subject: x\r\n\r\nhello\r\n", b"Subject: x\r\n\r\nhello\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b".leading\r\nmid.dle\r\n.\r\n..two\r\n", b"..leading\r\nmid.dle\r\n..\r\n...two\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
    ],
)
def test_line_endings_final_crlf_and_leading_periods(content: bytes, written: bytes) -> None:
    assert data_bytes(content) == written
