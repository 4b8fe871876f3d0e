"""Triton's sequence batcher: stateful models that see every request of a sequence in order.

A sequence is the requests that share a correlation ID, from the one flagged START to
the one flagged END. Each sequence sticks to one instance (its state lives there), its
requests run one at a time and in order, and requests of different sequences on the
same instance are batched together. The model learns where it is in a sequence from
the control inputs it configured (START, END, READY, CORRID), and may keep implicit
state: an output of one request fed back as an input of the next (``state``), which
Triton offers only to its C++ backends and this server offers to every backend.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import wire_datatype
from .datatypes import NUMPY_DTYPES
from .errors import InvalidArgument, Unavailable
from .request import SEQUENCE_END, SEQUENCE_START, InferenceRequest, InferenceResponse
from .scheduler import InstancePool, request_batch_size
from .tensor import Tensor

#: Triton's default ``max_sequence_idle_microseconds``.
DEFAULT_IDLE_US = 1_000_000

_KINDS = {0: "START", 1: "READY", 2: "END", 3: "CORRID"}


@dataclass(slots=True, frozen=True)
class ControlInput:
    """One configured control input: which signal it carries, and as what values."""

    name: str
    kind: str
    datatype: str
    #: (false value, true value) for START/END/READY.
    values: tuple[Any, Any] = (0, 1)

    @classmethod
    def from_config(cls, control_input: Any) -> list[ControlInput]:
        return [cls._one(control_input.name, control) for control in control_input.control]

    @classmethod
    def _one(cls, name: str, control: Any) -> ControlInput:
        kind = _KINDS[control.kind]
        if kind == "CORRID":
            return cls(name, kind, wire_datatype(control.data_type))
        if control.fp32_false_true:
            return cls(name, kind, "FP32", tuple(control.fp32_false_true))
        if control.bool_false_true:
            return cls(name, kind, "BOOL", tuple(control.bool_false_true))
        return cls(name, kind, "INT32", tuple(control.int32_false_true) or (0, 1))

    def tensor(self, request: InferenceRequest, rows: int, batching: bool) -> Tensor:
        shape = (rows, 1) if batching else (1,)
        if self.kind == "CORRID":
            value: Any = request.correlation_id
            if self.datatype == "BYTES":
                value = str(value).encode()
        else:
            flag = {
                "START": bool(request.flags & SEQUENCE_START),
                "END": bool(request.flags & SEQUENCE_END),
                "READY": True,
            }[self.kind]
            value = self.values[1] if flag else self.values[0]
        return Tensor(self.name, self.datatype, np.full(shape, value, NUMPY_DTYPES[self.datatype]))


@dataclass(slots=True, frozen=True)
class StateSpec:
    """One implicit state: the model's ``output_name`` comes back as its ``input_name``."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    initial: np.ndarray | None

    @classmethod
    def from_config(cls, state: Any) -> StateSpec:
        datatype = wire_datatype(state.data_type)
        dims = tuple(max(d, 1) for d in state.dims)
        initial = None
        for init in state.initial_state:
            init_dims = tuple(init.dims) or dims
            if init.WhichOneof("state_data") == "zero_data":
                initial = np.zeros(init_dims, NUMPY_DTYPES[datatype])
        return cls(state.input_name, state.output_name, datatype, dims, initial)

    def start_value(self, rows: int, batching: bool) -> np.ndarray:
        shape = ((rows,) if batching else ()) + self.dims
        if self.initial is not None:
            return np.broadcast_to(self.initial, shape).copy()
        return np.zeros(shape, NUMPY_DTYPES[self.datatype])


@dataclass(slots=True, eq=False)
class Sequence:
    """One live sequence: its instance, its waiting requests and its state."""

    correlation_id: int | str
    instance: int
    pending: deque[InferenceRequest] = field(default_factory=deque)
    running: bool = False
    #: END was received: no more requests join this sequence.
    ended: bool = False
    #: Its instance no longer counts it (see ``SequenceBatcher._forget_if_over``).
    released: bool = False
    last_seen_ns: int = 0
    state: dict[str, np.ndarray] = field(default_factory=dict)


class SequenceBatcher:
    """Routes each sequence to one instance and batches the heads of ready sequences."""

    def __init__(self, model_name: str, config: Any, pool: InstancePool) -> None:
        settings = config.sequence_batching
        self._model_name = model_name
        self._pool = pool
        self._max_rows = max(config.max_batch_size, 1)
        self._controls = [
            control
            for control_input in settings.control_input
            for control in ControlInput.from_config(control_input)
        ]
        self._states = [StateSpec.from_config(state) for state in settings.state]
        strategy = settings.WhichOneof("strategy_choice") or "direct"
        self._delay_ns = getattr(settings, strategy).max_queue_delay_microseconds * 1000
        self._idle_ns = (settings.max_sequence_idle_microseconds or DEFAULT_IDLE_US) * 1000
        self._sequences: dict[int | str, Sequence] = {}
        count = len(pool.instances)
        self._load = [0] * count
        #: Sequences per instance at once (Triton's slots); more wait in the backlog.
        self._slots = self._max_rows
        if strategy == "oldest" and settings.oldest.max_candidate_sequences > 0:
            self._slots = settings.oldest.max_candidate_sequences
        self._backlog: deque[Sequence] = deque()
        self._ready: list[deque[Sequence]] = [deque() for _ in range(count)]
        self._wake = [asyncio.Event() for _ in range(count)]
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._dispatch(i), name=f"{model_name}-sequence-{i}")
            for i in range(count)
        ]
        self._reaper = asyncio.create_task(self._reap_idle(), name=f"{model_name}-idle")

    # --- admission ---------------------------------------------------------------------

    def enqueue(self, request: InferenceRequest) -> None:
        if self._stopping:
            raise Unavailable(f"Request for unknown model: '{self._model_name}' is not ready")
        rows = request_batch_size(request, self._pool.batching)
        if rows != 1:
            raise InvalidArgument(
                f"inference request to model '{self._model_name}' must specify batch-size 1 "
                "due to requirements of sequence batcher"
            )
        sequence = self._sequence_for(request)
        for control in self._controls:
            request.inputs[control.name] = control.tensor(request, rows, self._pool.batching)
        sequence.pending.append(request)
        sequence.last_seen_ns = time.perf_counter_ns()
        if request.flags & SEQUENCE_END:
            sequence.ended = True
            self._sequences.pop(sequence.correlation_id, None)
        if not sequence.running and len(sequence.pending) == 1:
            self._make_ready(sequence)

    def _sequence_for(self, request: InferenceRequest) -> Sequence:
        correlation_id = request.correlation_id
        if correlation_id in (0, ""):
            raise InvalidArgument(
                f"inference request to model '{self._model_name}' must specify a non-zero or "
                "non-empty correlation ID"
            )
        sequence = self._sequences.get(correlation_id)
        if request.flags & SEQUENCE_START:
            if sequence is not None:  # restarted where it runs (Triton keeps its slot)
                return sequence
            sequence = Sequence(correlation_id, instance=-1)
            self._place(sequence)
            self._sequences[correlation_id] = sequence
        elif sequence is None:
            raise InvalidArgument(
                f"inference request for sequence {correlation_id} to model "
                f"'{self._model_name}' must specify the START flag on the first request of "
                "the sequence"
            )
        return sequence

    def _place(self, sequence: Sequence) -> None:
        """Give ``sequence`` a slot on the least loaded instance, or queue it until one frees."""
        instance = min(range(len(self._load)), key=self._load.__getitem__)
        if self._load[instance] >= self._slots:
            self._backlog.append(sequence)
            return
        sequence.instance = instance
        self._load[instance] += 1
        if sequence.pending and not sequence.running:
            self._make_ready(sequence)

    def _make_ready(self, sequence: Sequence) -> None:
        if sequence.instance < 0:
            return  # waiting for a slot
        self._ready[sequence.instance].append(sequence)
        self._wake[sequence.instance].set()

    # --- execution ---------------------------------------------------------------------

    async def _dispatch(self, index: int) -> None:
        ready, wake = self._ready[index], self._wake[index]
        while True:
            if not ready:
                if self._stopping:
                    return
                wake.clear()
                await wake.wait()
                continue
            while not self._pool.has_room(index):
                await self._pool.wait_for_room()
            await self._wait_for_fuller_batch(index)
            sequences, batch = self._take_batch(index)
            if batch:
                self._pool.launch(index, batch, after=lambda _, s=sequences: self._finished(s))

    async def _wait_for_fuller_batch(self, index: int) -> None:
        if self._delay_ns <= 0 or self._stopping:
            return
        ready = self._ready[index]
        oldest = min(s.pending[0].enqueued_ns for s in ready if s.pending)
        waited = time.perf_counter_ns() - oldest
        if len(ready) < self._max_rows and waited < self._delay_ns:
            self._wake[index].clear()
            try:
                await asyncio.wait_for(self._wake[index].wait(), (self._delay_ns - waited) / 1e9)
            except asyncio.TimeoutError:
                pass

    def _take_batch(self, index: int) -> tuple[list[Sequence], list[InferenceRequest]]:
        """The head request of each ready sequence, oldest first, up to the batch size."""
        ready = self._ready[index]
        sequences: list[Sequence] = []
        batch: list[InferenceRequest] = []
        rows = 0
        while ready:
            sequence = ready[0]
            while sequence.pending and sequence.pending[0].done:  # cancelled while queued
                sequence.pending.popleft()
            if not sequence.pending:
                ready.popleft()
                self._forget_if_over(sequence)
                continue
            request = sequence.pending[0]
            size = request_batch_size(request, self._pool.batching)
            if batch and rows + size > self._max_rows:
                break
            ready.popleft()
            sequence.pending.popleft()
            sequence.running = True
            self._attach_state(sequence, request, size)
            sequences.append(sequence)
            batch.append(request)
            rows += size
        return sequences, batch

    def _attach_state(self, sequence: Sequence, request: InferenceRequest, rows: int) -> None:
        if not self._states:
            return
        batching = self._pool.batching
        for spec in self._states:
            value = sequence.state.get(spec.output_name)
            if value is None or request.flags & SEQUENCE_START:
                value = spec.start_value(rows, batching)
            request.inputs[spec.input_name] = Tensor(spec.input_name, spec.datatype, value)
        request.response_hook = self._state_keeper(sequence)

    def _state_keeper(self, sequence: Sequence) -> Callable[[InferenceResponse], None]:
        names = {spec.output_name for spec in self._states}

        def keep(response: InferenceResponse) -> None:
            kept = []
            for tensor in response.outputs:
                if tensor.name in names:
                    sequence.state[tensor.name] = np.array(tensor.data, copy=True)
                else:
                    kept.append(tensor)
            response.outputs = kept

        return keep

    def _finished(self, sequences: list[Sequence]) -> None:
        for sequence in sequences:
            sequence.running = False
            sequence.last_seen_ns = time.perf_counter_ns()
            if sequence.pending:
                self._make_ready(sequence)
            else:
                self._forget_if_over(sequence)

    def _forget_if_over(self, sequence: Sequence) -> None:
        """Free the sequence's place on its instance once it ended and has nothing left."""
        over = sequence.ended and not sequence.pending and not sequence.running
        if over and not sequence.released:
            sequence.released = True
            if sequence.instance < 0:
                self._backlog.remove(sequence)
                return
            self._load[sequence.instance] -= 1
            if self._backlog:
                self._place(self._backlog.popleft())

    # --- idle sequences ------------------------------------------------------------------

    async def _reap_idle(self) -> None:
        """Release sequences idle longer than ``max_sequence_idle_microseconds``."""
        period = max(self._idle_ns / 1e9 / 4, 0.001)
        while not self._stopping:
            await asyncio.sleep(period)
            now = time.perf_counter_ns()
            for correlation_id, sequence in list(self._sequences.items()):
                idle = not sequence.running and not sequence.pending
                if idle and now - sequence.last_seen_ns > self._idle_ns:
                    del self._sequences[correlation_id]
                    sequence.ended = True
                    self._forget_if_over(sequence)

    async def drain_and_stop(self) -> None:
        self._stopping = True
        for wake in self._wake:
            wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._reaper.cancel()
        await asyncio.gather(self._reaper, return_exceptions=True)
        await self._pool.drain()
