#!/usr/bin/env python3
"""dbt, with the row values that PostgreSQL quotes in its errors removed from dbt's output.

Cosmos copies dbt's output into the Airflow task log. PostgreSQL's messages quote the value they
refused ('invalid input syntax for type timestamp: "<value>"', 'Failing row contains (<row>)',
'Key (patient_id)=(<value>) already exists'), and for us those values are patient data. Cosmos
runs this file as its dbt executable; it runs the real dbt (``CLIENTFLOW_DBT_EXECUTABLE``, default
``.venv-dbt/bin/dbt`` of the project) and passes its output on line by line, each line scrubbed,
and exits with dbt's exit code. What stays: the kind of error, and the names of the relation,
constraint, column and type involved. A run that failed because the database went away (a
terminated backend, a restart, refused connections) exits with ``TRANSIENT_EXIT`` instead of dbt's
code, so that the task is retried; a run that failed on the data is not.

With ``CLIENTFLOW_DBT_FORKSERVER`` set (the local stack sets it), the run is a fork of a server that
imported dbt already (``dbt_forkserver``: about two seconds less per run), its output read and
scrubbed the same way. Without it, or if the server does not answer, dbt starts on its own.

Standard library only: it runs under whatever ``python3`` is on the worker's PATH.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

WITHHELD = "(value withheld)"
_PROJECT = Path(__file__).resolve().parent.parent.parent
# A quoted string is a name, kept, after these words; anywhere else it may be a value.
_NAMES = (
    "relation", "constraint", "column", "table", "type", "index", "schema", "function", "encoding",
    "database", "role", "sequence", "view", "operator", "model", "test", "seed", "snapshot", "source",
    "macro", "node", "profile", "target", "project", "package", "file",
)
_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_NAME_BEFORE = re.compile(r"\b(?:" + "|".join(_NAMES) + r")\s*$", re.IGNORECASE)
_RULES = (
    # A value at the end of the line goes whole, even if it holds quotes of its own.
    (re.compile(r'(:\s+)".*"(\s*)$'), rf"\1{WITHHELD}\2"),
    (re.compile(r"Failing row contains \(.*\)"), f"Failing row contains {WITHHELD}"),
    (re.compile(r"Key \(([^)]*)\)=\(.*?\)(?=( already exists| is not present| is still referenced| conflicts|\.|$))"),
     rf"Key (\1)={WITHHELD}"),
    (re.compile(r"(JSON data, line \d+:).*"), rf"\1 {WITHHELD}"),
    (re.compile(r"0x[0-9a-fA-F]{2}(?:\s+0x[0-9a-fA-F]{2})*"), WITHHELD),  # bytes of a bad character
)


def scrub(line: str) -> str:
    """The line without the values PostgreSQL quotes; names of database objects are kept."""
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    out, last = [], 0
    for match in _QUOTED.finditer(line):
        out.append(line[last:match.start()])
        out.append(match.group() if _NAME_BEFORE.search(line, 0, match.start()) else WITHHELD)
        last = match.end()
    out.append(line[last:])
    return "".join(out)


def scrub_json(value: object) -> object:
    """Every string inside a JSON log line, scrubbed (dbt's --log-format json, which Cosmos reads):
    names and ids hold no quoted value and pass unchanged, messages lose their values."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [scrub_json(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_json(v) for k, v in value.items()}
    return value


def scrub_line(line: str) -> str:
    """One line of dbt's output: a JSON event (scrubbed value by value) or text."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return scrub(line)
        return json.dumps(scrub_json(event), ensure_ascii=False) + "\n"
    return scrub(line)


TRANSIENT_EXIT = 75
"""Exit code (EX_TEMPFAIL) of a failed dbt run that lost or could not get its database connection:
the task may be retried. Any other failure (a model or test that refused the data) is final."""
_TRANSIENT = re.compile("|".join((
    r"server closed the connection unexpectedly",
    r"terminating connection due to administrator command",  # pg_terminate_backend, a restart
    r"connection (?:to server|already closed|reset by peer|refused|timed out)",
    r"could not connect to server",
    r"SSL SYSCALL error",
    r"the database system is (?:shutting down|starting up|in recovery mode)",
    r"too many connections",
    r"could not serialize access",
    r"deadlock detected",
)), re.IGNORECASE)


def is_transient(line: str) -> bool:
    """A line of dbt's output that says the database went away or asked to try again."""
    return bool(_TRANSIENT.search(line))


FORKSERVER_ENV = "CLIENTFLOW_DBT_FORKSERVER"
"""The socket of a dbt fork server (clientflow/transform/dbt_forkserver.py), if one is to be used."""


class _Forked:
    """A run started by the fork server: its output's read end, its pid and the connection that
    reports its exit."""

    def __init__(self, conn: socket.socket, answers: Any, output: int, pid: int) -> None:
        self.conn, self.answers, self.output, self.pid = conn, answers, output, pid

    def terminate(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        with self.conn, self.answers:
            for line in self.answers:
                message = json.loads(line)
                if "exit" in message:
                    return int(message["exit"])
        raise OSError("the dbt fork server went away before the run's end")


def _forked(socket_path: str, dbt: str, argv: list[str]) -> _Forked | None:
    """dbt started by the fork server at ``socket_path``; None (and a line on stderr saying why)
    if the server is not there or refuses, and the caller runs dbt itself."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    try:
        conn.connect(socket_path)
        request = json.dumps({"dbt": dbt, "argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(request))], [write_end])
        conn.sendall(request)
        os.close(write_end)
        write_end = -1
        answers = conn.makefile("rb")
        answer = json.loads(answers.readline() or b"{}")
        if "pid" not in answer:
            answers.close()
            raise OSError(answer.get("refused", "no answer"))
        return _Forked(conn, answers, read_end, int(answer["pid"]))
    except (OSError, ValueError) as exc:
        print(f"dbt fork server at {socket_path} not used ({type(exc).__name__}: {exc}); starting dbt",
              file=sys.stderr, flush=True)
        conn.close()
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        return None


def main(argv: list[str]) -> int:
    dbt = os.environ.get("CLIENTFLOW_DBT_EXECUTABLE", str(_PROJECT / ".venv-dbt" / "bin" / "dbt"))
    forkserver = os.environ.get(FORKSERVER_ENV)
    proc: _Forked | subprocess.Popen[str] | None = _forked(forkserver, dbt, argv) if forkserver else None
    output: IO[str]
    if isinstance(proc, _Forked):
        output = open(proc.output, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    else:
        proc = subprocess.Popen([dbt, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        output = proc.stdout
    running = proc
    signal.signal(signal.SIGTERM, lambda *_: running.terminate())  # a killed task stops dbt too
    transient = False
    with output:
        for line in output:
            transient = transient or is_transient(line)
            sys.stdout.write(scrub_line(line))
            sys.stdout.flush()
    try:
        code = proc.wait()
    except (OSError, ValueError) as exc:  # the fork server died before it reported the run's end
        print(f"dbt run's exit code unknown ({type(exc).__name__}: {exc}); the task may be retried",
              file=sys.stderr, flush=True)
        return TRANSIENT_EXIT
    return TRANSIENT_EXIT if code != 0 and transient else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
