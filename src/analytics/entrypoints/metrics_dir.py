"""The prometheus-client multiprocess directory, prepared before prometheus_client loads.

Kept apart from :mod:`analytics.entrypoints.metrics` because importing that module
imports prometheus_client, which decides once, at import, whether it runs in
multiprocess mode.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiproc_dir(path: Path, environ: dict[str, str] | None = None) -> Path:
    """Empty (or create) ``path`` and export it as ``PROMETHEUS_MULTIPROC_DIR``.

    Called by the process that owns the directory (``analytics api``: the gunicorn master;
    ``analytics worker``: the dramatiq master) at its start, before prometheus_client is
    imported in it or its children: files left by an earlier run would otherwise be added
    to this run's counters.
    """
    path = Path(path).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    target = os.environ if environ is None else environ
    target[MULTIPROC_ENV] = str(path)
    return path
