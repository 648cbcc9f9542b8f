"""What the cache takes on disk, as `du` counts it: `cache_size_limit` bounds all of it.

The policy sees what each block really costs: its file's allocated size (whole file-system
blocks: an 8 KiB block takes 8 KiB, a 100-byte one 4 KiB) and ENTRY_BYTES for its rows (the
block's row, its object's metadata row, the object's row in the index and its hit count, the
block's directory entry, its place in the policy's saved state). Everything else in the
cache directory (the databases beyond what their rows are charged, their WAL files, the
policy's state, folders, damaged databases kept for a look) is measured by the keeper every
round and reserved from the limit, and so are the part files under way (every FLUSH: a
fill's at a whole block, whatever it has written yet) and the blocks other workers published
that the keeper has not applied yet, with SLACK kept free for what happens between two looks.

The margin: at rest `du` is within the limit (unless the rest alone takes more than 1 - LEAST
of it: the blocks keep LEAST). While traffic goes on it may pass it for a
moment by what the workers write between two looks of the keeper (FLUSH) beyond the free
quarter-to-whole slack: blocks their store threads store before the keeper makes room (four
threads a worker), fills started and finished in between. MARGIN_BLOCKS blocks a worker is
what the tests hold it to."""
from __future__ import annotations

import os

ENTRY_BYTES = 2048  # a block's share of the databases and of the policy's state (see the module's doc)
SLACK = 1 / 64  # of the limit, kept free for what changes between two rounds of the keeper
LEAST = 1 / 16  # of the limit: what the blocks keep, whatever the rest takes
MARGIN_BLOCKS = 4  # per worker: `du` may pass the limit by these many blocks for a moment (tens of milliseconds)
WAL_BYTES = 512 * 1024  # a database's WAL is cut back to this after a checkpoint
WAL_PAGES = WAL_BYTES // 4096  # pages (SQLite's 4 KiB) written to a WAL before it is checkpointed
WAL_RESERVE = 5 * WAL_BYTES  # for the WAL files of the store's five databases (heal.FILES), there or not


def allocated(size: int, unit: int) -> int:
    """Bytes a file of `size` bytes takes on a file system allocating `unit` bytes at a time."""
    return -(-size // unit) * unit


def block_cost(size: int, unit: int, on_disk: int = 0) -> int:
    """What a stored block of `size` bytes costs (`on_disk`: its file's allocated bytes, if known)."""
    return max(allocated(size, unit), on_disk) + ENTRY_BYTES


def object_cost(size: int, blocks: int, unit: int) -> int:
    """What an object of `size` bytes in `blocks` blocks costs when all of them are stored."""
    return allocated(size, unit) + blocks * ENTRY_BYTES


def room(limit: int, others: int, parts: int, charged: int) -> int:
    """The bytes blocks may cost within `limit`, when the rest of the directory takes `others`
    bytes (WAL files at their bound at least), of which the blocks' costs already count `charged`
    (ENTRY_BYTES each), and fills under way will take `parts` bytes."""
    free = limit - int(limit * SLACK) - max(0, others - charged) - parts
    return max(int(limit * LEAST), free)


def fit(current: int, room: int, limit: int) -> int:
    """The policy's capacity, given its `current` one and the `room` measured now: the room, once
    they differ by more than a quarter of the slack (so that the small changes of the rest of the
    directory, a WAL file's, a body being written, do not resize it, and evict, every round)."""
    return room if abs(room - current) > limit * SLACK / 4 else current


def measure(directory: str, blocks: str, parts: str) -> int:
    """Allocated bytes under `directory` but the files in the folders of `blocks` (those folders
    themselves counted) and the part files in `parts`, each WAL file counted as WAL_BYTES at least."""
    total = 0
    for folder, subfolders, names in os.walk(directory):
        if folder in (blocks, parts):
            names = [] if folder == parts else names + subfolders
            subfolders[:] = []
        total += taken(folder)
        for name in names:
            size = taken(os.path.join(folder, name))
            total += max(size, WAL_BYTES) - WAL_BYTES if name.endswith("-wal") else size  # reserved below
    return total + WAL_RESERVE


def filling(parts: str, fills: set[str], block: int) -> int:
    """Bytes the part files in `parts` will take: those of `fills` (paths) a block each, or more;
    the others what they take now (written whole)."""
    try:
        names = os.listdir(parts)
    except FileNotFoundError:
        return 0
    paths = [os.path.join(parts, name) for name in names]
    return sum(max(taken(path), block) if path in fills else taken(path) for path in paths)


def taken(path: str) -> int:
    """Allocated bytes of one file (0 if it is not there)."""
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:  # removed meanwhile
        return 0
