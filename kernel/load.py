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

    __slots__ = ("recent", "requests")

    def __init__(self) -> None:
        #: Requests admitted and not yet answered, every model and version together
        #: (an ensemble's steps count beside the ensemble's own request).
        self.requests = 0
        #: A moving average of ``requests`` as each request was admitted.
        self.recent = 0.0

    def admit(self) -> None:
        """A request comes in."""
        self.requests += 1
        self.recent += (self.requests - self.recent) * _SMOOTHING

    @property
    def alone(self) -> bool:
        """Whether the request asking is the only one in flight, and requests have come
        one at a time lately: several clients whose requests merely take turns (a slow
        client, a burst ending) keep the machine's CPUs busy enough without polling."""
        return self.requests <= 1 and self.recent < _ALONE


#: Weight of the newest admission in ``Load.recent``.
_SMOOTHING = 0.125
#: ``Load.recent`` below this: requests come one at a time.
_ALONE = 1.25


#: The process-wide counter.
LOAD = Load()
