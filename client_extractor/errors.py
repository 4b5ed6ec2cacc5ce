"""Exit codes, the ExtractorError hierarchy, and messages that are safe to print.

Every error the extractor raises on purpose is an ExtractorError whose class carries its exit code
and whose text never holds a row value, password or token. argparse's own messages quote what they
could not parse (a --source URL with a password, a mistyped ``--password secret``), so the parser
here keeps only the option names.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from client_extractor import PROG

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_EXTRACT = 4
EXIT_OUTPUT = 5
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70

PASSWORD_ENV = "EXTRACTOR_DB_PASSWORD"
"""Read by ``settings.resolve_password``; named here because usage and connection messages point to it."""


class ExtractorError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(ExtractorError):
    exit_code = EXIT_USAGE


class ConnectError(ExtractorError):
    exit_code = EXIT_CONNECT


class ExtractError(ExtractorError):
    exit_code = EXIT_EXTRACT


class OutputError(ExtractorError):
    exit_code = EXIT_OUTPUT


_OPTION_NAME_RE = re.compile(r"--[a-z][a-z0-9-]*")


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints and exits by itself; keep our format
        raise UsageError(f"{without_values(message)} (see --help)")


def without_values(message: str) -> str:
    """argparse quotes what it could not parse: a --source URL holding a password, a mistyped
    `--password secret`. Keep the option names only, never a value."""
    if message.startswith("unrecognized arguments: "):
        tokens = message.removeprefix("unrecognized arguments: ").split()
        names = [m.group(0) for t in tokens if (m := _OPTION_NAME_RE.match(t))]
        message = "unrecognized arguments: " + (" ".join(names) if names else "(values without an option name)")
        if "--password" in names:
            message += f"; the password comes from {PASSWORD_ENV}, 'password' in the config file, or the prompt"
        return message
    ambiguous = re.match(r"ambiguous option: (\S*?)(=.*)? could match (.*)$", message, re.DOTALL)
    if ambiguous:
        return f"ambiguous option: {ambiguous.group(1)} could match {ambiguous.group(3)}"
    return re.sub(r"ignored explicit argument .*", "takes no value", message, flags=re.DOTALL)


def warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def connect_hint(detail: str) -> str:
    """What to check after a failed connection, from the (already scrubbed) driver message."""
    low = detail.lower()
    if "password" in low or "access denied" in low or "authentication" in low:
        return f"Check the user name and the password (set {PASSWORD_ENV}, 'password' in the config file, or run in a terminal to be asked)."
    if "does not exist" in low or "unknown database" in low:
        return "Check the database name at the end of --source."
    if "timeout" in low or "timed out" in low:
        return "Check the host and port, and that a firewall lets this machine reach the database."
    return "Check the host, port and that the database server is running and reachable from this machine."
