"""How busy the server is: requests in flight, all models together.

Backends read it on their hot path to decide whether busy polling pays. It does when
the server has one request in flight and nothing else to do: a process that sleeps
and is woken for each message costs tens of microseconds per wake-up (more on virtual
machines), more than serving a small request, while a short poll on an idle CPU costs
nothing anyone needs. Under load the processes stay awake by themselves, and polling
would only take CPU from the work.
"""

from __future__ import annotations


class Load:
    """A counter the kernel keeps (``ModelVersion`` counts each request in and out)."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        #: Requests admitted and not yet answered, every model and version together
        #: (an ensemble's steps count beside the ensemble's own request).
        self.requests = 0

    @property
    def alone(self) -> bool:
        """Whether at most one request is in flight: the one asking, if any."""
        return self.requests <= 1


#: The process-wide counter.
LOAD = Load()
