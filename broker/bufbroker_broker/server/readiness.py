"""Readiness: whether the broker should be sent new work."""

from dataclasses import dataclass


@dataclass
class Readiness:
    """Ready once both sockets accept; not ready again while draining."""

    serving: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.serving and not self.draining
