"""What this process knows about a dependency being down, and one log line per interval.

The request path asks a dependency (PostgreSQL, Redis) only while it is up,
or once per GATEWAY_OUTAGE_RETRY_SECONDS while it is down, so a dead one costs a request
nothing but its fallback. Every failure is counted; a warning is logged at
most once per LOG_INTERVAL with the number of failures since the last one,
and one line when a dependency reported down answers again: at most two lines
per interval, however many requests fail or however often it flaps.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)

LOG_INTERVAL = 30.0


class Outage:
    """The state of one dependency in this process (touched from the loop and the sync thread)."""

    def __init__(self, name: str, consequence: str) -> None:
        self.name = name
        self.consequence = consequence  # what callers see meanwhile, for the log line
        self.down_since: float | None = None
        self.failed_at = 0.0
        self.retry_at = 0.0
        self.unreported = 0
        self.reported_at: float | None = None
        self.announced = False  # a warning said it is down; say when it is back

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def may_try(self) -> bool:
        """Whether to ask the dependency now: always while up, once per interval while down."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self.retry_at:
            return False
        self.retry_at = (
            now + settings.GATEWAY_OUTAGE_RETRY_SECONDS
        )  # claimed: others wait for this attempt
        return True

    def failed(self, exc: BaseException) -> None:
        """Record a failed call; logs a warning at most once per LOG_INTERVAL."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        self.failed_at = now
        self.retry_at = now + settings.GATEWAY_OUTAGE_RETRY_SECONDS
        self.unreported += 1
        if self.reported_at is None or now - self.reported_at >= LOG_INTERVAL:
            logger.warning(
                "%s is unreachable (%s: %s); %s. %d failed call(s) since the last report.",
                self.name,
                type(exc).__name__,
                exc,
                self.consequence,
                self.unreported,
            )
            self.reported_at, self.unreported, self.announced = now, 0, True

    def recovered(self) -> None:
        """Record a successful call; logs once when the dependency was down."""
        if self.down_since is None:
            return
        if self.announced:
            logger.info(
                "%s answers again after %.1f s.", self.name, time.monotonic() - self.down_since
            )
            self.announced = False
        self.down_since = None
        self.retry_at = 0.0

    def reset(self) -> None:
        """Forget everything (tests start afresh)."""
        self.__init__(self.name, self.consequence)


database = Outage("The database", "requests are served from the cache where it holds the data")
redis = Outage(
    "Redis",
    "limited and wallet-billed links answer 503; breakers and cache invalidation are local",
)
