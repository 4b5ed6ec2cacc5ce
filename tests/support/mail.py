"""Read what the test SMTP server (aiosmtpd's Mailbox handler, a Maildir) received."""

from __future__ import annotations

import mailbox
from pathlib import Path
from typing import Any


def read_mail(box: Path) -> list[Any]:
    if not box.exists():
        return []
    return sorted(mailbox.Maildir(str(box), create=False), key=lambda m: m.get_date())
