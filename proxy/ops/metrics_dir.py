"""The directory where worker processes keep their metric values (prometheus_client multiprocess
mode). Does not import prometheus_client: the variable must be set before it is imported."""
from __future__ import annotations

import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str:
    """A fresh, empty directory, named in the environment the workers inherit."""
    directory = tempfile.mkdtemp(prefix="edgecache-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(MULTIPROC_ENV, None)
