"""The client extractor's binary, built once for the whole test session (PyInstaller)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "client-extractor"
SOURCES = [*sorted((ROOT / "client_extractor").rglob("*.py")), ROOT / "client_extractor" / "client-extractor.spec"]


def build_binary() -> Path:
    """Build dist/client-extractor unless it is newer than every source file. Parallel test
    workers take turns (a lock file beside PyInstaller's work directory): one builds, the others
    find the binary built."""
    lock = ROOT / "build" / "client-extractor.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if BINARY.exists() and BINARY.stat().st_mtime > max(p.stat().st_mtime for p in SOURCES):
            return BINARY
        subprocess.run(
            [str(Path(sys.executable).parent / "pyinstaller"), "--noconfirm", "--log-level", "WARN", "--distpath",
             str(ROOT / "dist"), "--workpath", str(ROOT / "build" / "client-extractor"),
             str(ROOT / "client_extractor" / "client-extractor.spec")],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    return BINARY
