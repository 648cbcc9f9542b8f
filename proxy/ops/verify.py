"""edgecache verify: every stored block of a cache directory read and checked against the length
and checksum written with it (proxy/store/integrity.py), with a progress bar on a terminal and
a summary; damaged blocks are dropped only when asked (--drop)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ..config import format_size
from ..store.disk import Store
from ..store.integrity import Verdict


@dataclass
class Findings:
    blocks: int = 0
    bytes: int = 0
    damaged: dict[Verdict, int] = field(default_factory=dict)
    unrecorded: int = 0  # blocks stored before blocks had checksums (their length was checked)
    dropped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def damage(self) -> int:
        return sum(self.damaged.values())

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        blocks = f"{self.blocks} stored block{'' if self.blocks == 1 else 's'}"
        line = f"checked {blocks}, {format_size(self.bytes)} in {seconds:.1f} s: "
        if not self.damage:
            line += "no damage"
        else:
            kinds = ", ".join(f"{n} {verdict.value}" for verdict, n in sorted(self.damaged.items(),
                                                                            key=lambda item: item[0].value))
            line += f"{self.damage} damaged ({kinds}), " + (f"{self.dropped} dropped" if self.dropped else
                                                             "none dropped (--drop drops them)")
        if self.unrecorded:
            line += f"; {self.unrecorded} without a checksum (stored by an older edgecache)"
        return line


def verify(store: Store, drop: bool, console: Console) -> Findings:
    """Check every stored block (dropping the damaged ones if `drop`), showing progress on `console`."""
    findings = Findings()
    _, total = store.block_total()
    columns = (TextColumn("verifying"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task("verify", total=total)
        for key, size in store.stored_blocks():
            found = store.inspect_block(key, size)
            progress.update(task, advance=size)
            if found is None:  # removed meanwhile (a running edge evicted it)
                continue
            verdict, read, filename = found
            findings.blocks += 1
            findings.bytes += read
            if verdict is Verdict.UNRECORDED:
                findings.unrecorded += 1
            if verdict.damaged:
                findings.damaged[verdict] = findings.damaged.get(verdict, 0) + 1
                console.print(f"damaged ({verdict.value}): block {key}, file {filename}", markup=False,
                              highlight=False, soft_wrap=True)
                if drop:
                    store.drop_damaged(key, filename, verdict)
                    findings.dropped += 1
    return findings
