"""One Prefect server for many stage processes: `dvc repro` starts a process per stage, and each one on its
own starts an ephemeral Prefect server (25-35 s on a 2-core machine); pointed at a running server
(PREFECT_API_URL) a stage process connects in about 3 s.

    python -m flows repro [dvc repro args]     # dvc repro with one server for all its stages (make demo)

    with prefect_server(home) as api_url:       # tests/conftest.py: the suite's stage subprocesses
        subprocess.run(cmd, env={**env, "PREFECT_API_URL": api_url})

Results and caches stay where each run's Prefect home puts them (PREFECT_LOCAL_STORAGE_PATH): the server
holds only run metadata, so runs with and without it share their caches.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_prefect(env) -> dict:
    """An environment minus Prefect settings (a process may have pointed Prefect at its own home)."""
    return {k: v for k, v in env.items() if not k.startswith(("PREFECT_", "SYNTHFACE_PREFECT"))}


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float = 180.0):
    """A Prefect server on a free local port with its database under `home`; yields its API URL and stops
    it (its whole process group) on exit."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**without_prefect(os.environ), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'server.db'}",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"the Prefect server did not start:\n{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def repro(args: list[str]) -> int:
    """`dvc repro args` with every stage process talking to one server (the project's Prefect home)."""
    from . import ROOT
    home = Path(os.environ.get("SYNTHFACE_PREFECT_HOME", ROOT / ".prefect"))
    with prefect_server(home / "server") as url:
        dvc = Path(sys.executable).parent / "dvc"
        return subprocess.run([str(dvc) if dvc.exists() else "dvc", "repro", *args], cwd=ROOT,
                              env={**os.environ, "PREFECT_API_URL": url}).returncode
