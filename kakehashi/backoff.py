"""Exponential backoff with full jitter, for reconnect and retry loops."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``next()`` returns the next delay: uniform in [base, min(cap, base * 2**attempt)]; ``reset()`` after success."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self._random.uniform(self.base, max(self.base, ceiling))

    def reset(self) -> None:
        self.attempt = 0
