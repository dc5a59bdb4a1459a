"""``lsb-mm serve`` in a child process on a free 127.0.0.1 port, for benchmarks, tests and notebooks."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, Optional, Sequence

__all__ = ["running_server"]


@contextlib.contextmanager
def running_server(args: Sequence[str], timeout: float = 180.0, env: Optional[Dict[str, str]] = None):
    """``lsb-mm serve ARGS`` in a child process on a free 127.0.0.1 port; yields its base URL once
    ``/health`` answers, and stops it on exit (for benchmarks, tests and notebooks)."""
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lsb_mm", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"lsb-mm serve exited with {proc.returncode}: {log.read()[-2000:]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lsb-mm serve did not answer on {url} within {timeout:.0f} s")
                time.sleep(0.2)
            try:
                yield url
            except BaseException:  # the caller failed: the server's own account goes with its error
                log.seek(0)
                sys.stderr.write(f"--- lsb-mm serve log (last 4000 characters) ---\n{log.read()[-4000:]}\n")
                raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
