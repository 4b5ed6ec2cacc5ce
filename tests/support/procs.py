"""The machine's processes, from /proc (Linux): what tests that kill or watch processes look up."""

from __future__ import annotations

from pathlib import Path


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    found: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = int(fields[1])
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [child for child, parent in parents().items() if parent == pid]


def with_args(*args: str) -> list[int]:
    """The processes whose command line holds each of ``args`` as a whole argument."""
    wanted = [a.encode() for a in args]
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if all(a in argv for a in wanted):
            found.append(int(cmdline.parent.name))
    return found
