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
    found = sorted(mailbox.Maildir(str(box), create=False), key=lambda m: m.get_date())
    return [m for m in found if kind is None or m.get("X-Clientflow-Alert") == kind]


def body_of(message: Any) -> str:
    """The text of an alert (the smtp provider's hook sends HTML: ours is one <pre> block)."""
    for part in message.walk():
        if part.get_content_maintype() == "text":
            text = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            return html.unescape(re.sub(r"</?pre>", "", text))
    raise AssertionError("the message has no text part")
