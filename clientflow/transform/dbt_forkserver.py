#!/usr/bin/env python3
"""A fork server for dbt: dbt imported once, each run a fork of it.

dbt takes about two seconds to import on our 2-core machines (``python -X importtime -c "import
dbt.cli.main"``: 2.1 s), and every batch's ``dbt build`` paid it: for an incremental batch that
is a tenth of its whole way from the bucket to production. This server, started by the local stack
with the dbt virtualenv's Python, imports dbt once and then forks a child per run, which starts at
dbt's command line with everything imported.

    .venv-dbt/bin/python clientflow/transform/dbt_forkserver.py SOCKET

``dbt_scrubbed`` (Cosmos' dbt executable) uses it when ``CLIENTFLOW_DBT_FORKSERVER`` names its
socket, and runs dbt as a program of its own when the variable is unset or the server does not
answer: the server only saves time, nothing depends on it.

One run, over a connection to ``SOCKET`` (a Unix socket, mode 0600: only its user may connect):

1. The client sends a 4-byte length with the write end of a pipe attached (``SCM_RIGHTS``), then
   that many bytes of JSON: ``{"dbt": <the dbt executable it would run>, "argv": [...], "env":
   {...}, "cwd": "..."}``. ``dbt`` must be of this server's virtualenv: a client configured for
   another dbt is refused and runs its own.
2. The server forks a handler for the connection, which forks the run: the run takes the request's
   environment and directory, writes its output (stdout and stderr) into the pipe, and reads
   nothing (stdin is /dev/null).
3. The handler answers ``{"pid": N}`` once the run started, then ``{"exit": CODE}`` (a negative
   code: killed by that signal) when it ended. If the client goes away before (killed), the
   handler stops the run (SIGTERM, then SIGKILL after ten seconds), as dbt would have died of
   its closed output.

Single-threaded: a process that forks must hold no other threads. The server exits on SIGTERM, and
when the dbt it imported was reinstalled under it (it would run the old modules); the stack starts
it again. Standard library only, with dbt.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

HEADER = struct.Struct("!I")
MAX_REQUEST = 16 * 1024 * 1024
"""The largest request accepted: a mapping's vars are tens of kilobytes."""
STOP_GRACE_SECONDS = 10.0
PRELOAD = ("dbt.cli.main", "dbt.adapters.postgres", "dbt.adapters.postgres.impl", "dbt.task.build",
           "dbt.parser.manifest")
"""What every run needs: imported by the server, before any fork."""


class Refused(Exception):
    """A request this server does not run; the client runs dbt on its own."""


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise Refused("the client closed the connection mid-request")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _same_virtualenv(dbt: str) -> bool:
    """Whether ``dbt`` (a path, not resolved: a virtualenv's python is a link) is the dbt of the
    virtualenv this server runs in."""
    return os.path.dirname(os.path.abspath(dbt)) == os.path.dirname(os.path.abspath(sys.executable))


def _run(request: dict[str, Any], out_fd: int) -> None:
    """The forked run: dbt's command line, as ``bin/dbt`` runs it. Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(null)
        os.close(out_fd)
        # The server's own streams were opened for its log file; the run's are the pipe, line by line.
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()  # TZ is the request's now
        import random

        random.seed()  # not the state every fork of the server shares
        sys.argv = ["dbt", *request["argv"]]
        from dbt.cli.main import cli

        try:
            result = cli()
            code = 0 if result is None else int(result)
        except SystemExit as exc:  # click's standalone mode ends with sys.exit
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - reported on the run's output, the code says failed
        print(f"dbt fork server: the run stopped on {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        # What a normal exit runs: dbt's and multiprocessing's exit functions (its semaphores,
        # which a resource tracker would otherwise report leaked), but not the server's own
        # cleanup, which a plain sys.exit of this fork would reach.
        try:
            import atexit

            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001, S110 - the run is over; its code stands
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - the reader went away: nothing to flush to
                pass
        os._exit(code)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, ChildProcessError):
        pass


def _handle(conn: socket.socket) -> None:
    """One connection, in a fork of the server. Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; this process waits for its run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        data, fds, _, _ = socket.recv_fds(conn, HEADER.size, 1)
        if len(data) != HEADER.size or len(fds) != 1:
            raise Refused("a request starts with its length and the output's file descriptor")
        (length,) = HEADER.unpack(data)
        if length > MAX_REQUEST:
            raise Refused(f"a request of {length} bytes is over {MAX_REQUEST}")
        request = json.loads(_read_exactly(conn, length))
        if not _same_virtualenv(request["dbt"]):
            raise Refused(f"{request['dbt']} is not the dbt of this server ({sys.executable})")
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run(request, fds[0])
        os.close(fds[0])
        ended = False
        try:
            _send(conn, {"pid": pid})
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ended = True
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                    break
                readable, _, _ = select.select([conn], [], [], 0.2)
                if readable and not conn.recv(1):  # the client is gone: so is the run's reader
                    break
        except OSError:  # the client went away mid-answer
            pass
        if not ended:  # its run has no reader any more
            _stop(pid)
    except Refused as exc:
        try:
            _send(conn, {"refused": str(exc)})
        except OSError:
            pass
    except Exception as exc:  # noqa: BLE001 - the client falls back to a dbt of its own
        try:
            _send(conn, {"refused": f"{type(exc).__name__}: {exc}"})
        except OSError:
            pass
    finally:
        os._exit(0)


def _imported_from() -> tuple[str, float]:
    import dbt

    path = Path(dbt.__file__).parent
    return str(path), path.stat().st_mtime


def serve(path: str) -> None:
    # sys.path as ``bin/dbt`` has it: its first entry the virtualenv's bin, not this file's folder,
    # whose dbt_*.py dbt would import as plugins (it imports every module named dbt_* on the path).
    sys.path[0] = os.path.dirname(os.path.abspath(sys.executable))
    for module in PRELOAD:
        __import__(module)
    dbt_dir, dbt_mtime = _imported_from()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a server that died left it
        else:
            sys.exit(f"dbt fork server: another server answers on {path}")
        finally:
            probe.close()
    old_umask = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old_umask)
    server.listen(64)
    server.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    # SIGTERM only raises a flag, which the loop reads at least once a second: an exception raised
    # by a handler could land inside os.fork()'s own callbacks, which swallow it.
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    print(f"dbt fork server: dbt of {dbt_dir} imported; serving {path}", flush=True)
    try:
        while not stopping:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                conn = None
            if stopping:
                if conn is not None:
                    conn.close()
                break
            if not os.path.exists(dbt_dir) or os.stat(dbt_dir).st_mtime != dbt_mtime:
                print("dbt fork server: dbt was reinstalled; stopping (runs start dbt on their own until "
                      "the server is started again)", flush=True)
                if conn is not None:
                    conn.close()
                return
            if conn is None:
                continue
            conn.settimeout(None)
            if os.fork() == 0:
                server.close()
                _handle(conn)
            conn.close()
    finally:
        server.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: dbt_forkserver.py SOCKET")
    serve(sys.argv[1])
