"""The one driver: asks the pure rules what to answer, then does the I/O."""
from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings
from .http.conditional import Conditions
from .http.model import ResponsePlan
from .http.plan import plan_response
from .origins.local import LocalOrigin
from .streaming import SpanReader


@dataclass
class Reply:
    """A planned response and where its span bytes come from; call close() when sent."""

    plan: ResponsePlan
    reader: SpanReader | None
    close: Callable[[], None]


@dataclass(frozen=True)
class RequestFacts:
    method: str
    path: str  # cleaned, relative to the origin root
    conditions: Conditions
    range: str | None


class EdgeService:
    def __init__(self, settings: Settings, origin: LocalOrigin) -> None:
        self.settings = settings
        self.origin = origin
        self._cache_control = (("Cache-Control", settings.cache_control),) if settings.cache_control else ()

    async def fetch(self, facts: RequestFacts) -> Reply | None:
        """The reply for a GET or HEAD of an origin file; None when there is no such file."""
        opened = await self.origin.open(facts.path)
        if opened is None:
            return None
        rep = dataclasses.replace(opened.rep, extra_headers=self._cache_control)
        plan = plan_response(
            facts.method,
            facts.conditions,
            facts.range,
            rep,
            max_ranges=self.settings.max_ranges,
            boundary=secrets.token_hex(12),
            now=time.time(),
        )
        return Reply(plan, opened.read, opened.close)
