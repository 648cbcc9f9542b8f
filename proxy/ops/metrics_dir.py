"""The directory where worker processes keep their metric values (prometheus_client multiprocess
mode). Does not import prometheus_client: the variable must be set before it is imported."""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "edgecache-metrics-"
_OWNER = re.compile(re.escape(_PREFIX) + r"(\d+)-")


def multiprocess_dir() -> str:
    """A fresh, empty directory named in the environment the workers inherit, and named after
    this process; those of servers that are gone (killed before they could remove theirs) go."""
    for old in glob.glob(os.path.join(tempfile.gettempdir(), _PREFIX + "*")):
        owner = _OWNER.match(os.path.basename(old))
        if owner and not _alive(int(owner.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(MULTIPROC_ENV, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True
