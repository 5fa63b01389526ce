"""Prefect flows of synthface, one per DVC stage; `python -m flows <stage>` runs one.

Importing this package points Prefect at a project-local home (an ephemeral server on SQLite under
.prefect/, analytics off) before prefect itself is imported, so every run works offline. Training
checkpoints go to .prefect/checkpoints/ (CHECKPOINTS), large result files to .prefect/blobs/ (BLOBS).
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_home = Path(os.environ.get("SYNTHFACE_PREFECT_HOME", ROOT / ".prefect"))
# resumable training state lives beside Prefect's result cache (git- and dvc-ignored), never in a stage's
# outputs: dvc repro deletes those before it reruns the stage
CHECKPOINTS = _home / "checkpoints"
# large files of cached task results (a frozen Stable Diffusion base), by sha256: results hold references
BLOBS = _home / "blobs"
os.environ.setdefault("PREFECT_HOME", str(_home))
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(_home / "storage"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{_home / 'prefect.db'}")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # a Dask runner's cluster chatter
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
# the ephemeral server starts slowly on a cold 2-core machine (first imports, migrations): 20 s default is short
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
