"""Read what the test SMTP server (aiosmtpd's Mailbox handler, a Maildir) received."""

from __future__ import annotations

import html
import mailbox
import re
from pathlib import Path
from typing import Any


def read_mail(box: Path, kind: str | None = None) -> list[Any]:
    """Every message, oldest first; with ``kind``, only alerts of that kind (FAILED, ESCALATED,
    ALERT, RECOVERED: the X-Clientflow-Alert header)."""
    if not box.exists():
        return []
    maildir = mailbox.Maildir(str(box), create=False)
    found = [maildir[key] for key in sorted(maildir.keys(), key=_delivered)]
    return [m for m in found if kind is None or m.get("X-Clientflow-Alert") == kind]


def _delivered(key: str) -> tuple[int, int, int, int]:
    """When a message reached the Maildir, from its file name (mailbox.Maildir writes
    ``<seconds>.M<microseconds>P<pid>Q<count>.<host>``): its Date header says only the second, so
    two messages of one second could swap places, and a test that slices off the messages it had
    seen before (``read_mail(box)[before:]``) would take an old one for a new one."""
    found = re.match(r"(\d+)\.M(\d+)P(\d+)Q(\d+)\.", key)
    if found is None:
        raise AssertionError(f"a Maildir message not written by mailbox.Maildir: {key}")
    seconds, micros, pid, count = (int(g) for g in found.groups())
    return seconds, micros, pid, count


def body_of(message: Any) -> str:
    """The text of an alert (the smtp provider's hook sends HTML: ours is one <pre> block)."""
    for part in message.walk():
        if part.get_content_maintype() == "text":
            text = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            return html.unescape(re.sub(r"</?pre>", "", text))
    raise AssertionError("the message has no text part")
