"""The real specprune_server as a child process, for the Python integration tests.

SPECPRUNE_SERVER_BIN (set by ctest) names the binary; the tests skip when it is not built.
"""
import contextlib
import os
import re
import signal
import socket
import subprocess

import pytest

SERVER_BIN = os.environ.get("SPECPRUNE_SERVER_BIN", "build/bin/specprune_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(args, stderr=subprocess.PIPE):
    """Starts the server on 127.0.0.1 with an ephemeral gRPC port plus `args`; yields (process,
    port). On exit sends SIGTERM and asserts a clean exit (the drain)."""
    if not os.path.exists(SERVER_BIN):
        pytest.skip(f"{SERVER_BIN} not built")
    proc = subprocess.Popen([SERVER_BIN, "--host", "127.0.0.1", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on [^:]+:(\d+)", line)
    if not m:
        proc.kill()
        err = proc.stderr.read() if stderr == subprocess.PIPE else ""
        raise AssertionError(f"unexpected server output: {line!r} {err}")
    yield proc, int(m.group(1))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "server did not exit cleanly on SIGTERM"
