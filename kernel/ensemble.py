"""Ensembles (``platform: "ensemble"``): a DAG of composing models run per request.

An ensemble is a built-in backend: the kernel picks it for the ensemble platform
instead of a backend plugin. Its one instance runs every request as its own task, so
ensemble requests never wait for each other; each step is an ordinary request to its
composing model through the in-process ``Server``, so steps batch with other traffic
and are counted in that model's statistics. A step starts as soon as all its input
tensors exist, so independent steps run at once.

Decoupled composing models are supported as Triton supports them: each response of
such a step is one *iteration* of its output tensors, the steps after it run once per
iteration, and the ensemble (decoupled itself) answers once per complete iteration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import InstanceSpec, ModelContext
from .config import dims_match, dims_of
from .errors import Internal, InvalidArgument, KernelError
from .request import (
    SEQUENCE_END,
    SEQUENCE_START,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    sequence_flags,
)
from .tensor import Tensor

__all__ = ["EnsembleBackend", "EnsembleGraph", "EnsembleModel", "Step", "reshape_for"]

log = logging.getLogger(__name__)

#: The scheduler may hand the instance any number of requests at once.
_UNLIMITED = 1 << 30


@dataclass(frozen=True, slots=True)
class Step:
    """One ``ensemble_scheduling.step``: a composing model and its tensor maps."""

    index: int
    model_name: str
    #: -1: the version the model serves by default.
    model_version: int
    #: Composing model input -> ensemble tensor.
    inputs: dict[str, str]
    #: Composing model output -> ensemble tensor.
    outputs: dict[str, str]


@dataclass(slots=True)
class EnsembleGraph:
    """Which step reads and writes which ensemble tensor; computed once per load."""

    name: str
    steps: tuple[Step, ...]
    #: Ensemble tensor -> the steps that read it.
    consumers: dict[str, tuple[int, ...]]
    #: Ensemble tensor -> the step that writes it.
    producer: dict[str, int]
    #: The ensemble's outputs in configuration order, with their dims (reshape if any).
    outputs: dict[str, tuple[int, ...]]
    #: Optional ensemble inputs (absent ones still let their steps run).
    optional_inputs: tuple[str, ...]
    #: Whether the ensemble has a batch dimension (``max_batch_size`` > 0).
    batching: bool
    #: Requested outputs -> the steps they need (most requests ask for the same ones).
    _needed: dict[frozenset[str], frozenset[int]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> EnsembleGraph:
        steps = tuple(
            Step(i, s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
            for i, s in enumerate(config.ensemble_scheduling.step)
        )
        consumers: dict[str, list[int]] = {}
        producer: dict[str, int] = {}
        for step in steps:
            for tensor in step.inputs.values():
                consumers.setdefault(tensor, []).append(step.index)
            for tensor in step.outputs.values():
                producer[tensor] = step.index
        return cls(
            config.name,
            steps,
            {tensor: tuple(indices) for tensor, indices in consumers.items()},
            producer,
            {t.name: dims_of(t) for t in config.output},
            tuple(t.name for t in config.input if t.optional),
            config.max_batch_size > 0,
        )

    def needed_steps(self, requested: frozenset[str]) -> frozenset[int]:
        """The steps that lead to ``requested`` outputs (Triton prunes the others)."""
        found = self._needed.get(requested)
        if found is None:
            found = self._needed[requested] = self._trace(requested)
        return found

    def _trace(self, requested: frozenset[str]) -> frozenset[int]:
        needed: set[int] = set()
        pending = list(requested)
        while pending:
            index = self.producer.get(pending.pop())
            if index is not None and index not in needed:
                needed.add(index)
                pending.extend(self.steps[index].inputs.values())
        return frozenset(needed)


# --- loading ------------------------------------------------------------------------------


class EnsembleBackend:
    """The kernel's built-in backend for ``platform: "ensemble"``."""

    name = "ensemble"

    async def load_model(self, context: ModelContext) -> EnsembleModel:
        """Build the graph; the manager checked the steps against their models already."""
        config = context.config
        return EnsembleModel(context.server, config, EnsembleGraph.from_config(config))

    async def finalize(self) -> None:
        return None


class EnsembleModel:
    """A loaded ensemble version: its configuration and graph."""

    def __init__(self, server: Any, config: Any, graph: EnsembleGraph) -> None:
        self.server = server
        self.config = config
        self.graph = graph

    async def create_instance(self, spec: InstanceSpec) -> EnsembleInstance:
        return EnsembleInstance(self)

    async def finalize(self) -> None:
        return None


class EnsembleInstance:
    """Runs each request of a batch as its own ensemble execution."""

    #: Never make a request wait for another one: each is only waiting on its steps.
    pipeline_depth = _UNLIMITED

    def __init__(self, model: EnsembleModel) -> None:
        self.model = model

    async def execute(self, requests: Sequence[InferenceRequest]) -> None:
        """Run the requests; raise the (first) step error so the request counts as failed."""
        runs = [_Run(self.model, request) for request in requests]
        await asyncio.gather(*(run.run() for run in runs))
        errors = [run.error for run in runs if run.error is not None]
        if errors:
            raise errors[0]

    async def finalize(self) -> None:
        return None


def reshape_for(
    dims: Sequence[int], batching: bool, batch_size: int, data: np.ndarray
) -> np.ndarray:
    """Add or drop a batch dimension between batching and non-batching models (a view).

    Triton's ``ReshapeTensorDims``: only when one side batches and the other does not,
    and only where the dims show the tensor needs it.
    """
    if batching == (batch_size != 0):
        return data
    shape = data.shape
    if batching:
        return data.reshape((1, *shape)) if dims_match(dims, shape) else data
    if not dims_match(dims, shape) and batch_size == 1:
        return data.reshape(shape[1:])
    return data


# --- one request ----------------------------------------------------------------------


@dataclass(slots=True)
class _Value:
    """One iteration of an ensemble tensor, and what a step needs to pass it on."""

    #: None: an optional input not given, or an output its step did not produce.
    tensor: Tensor | None
    #: The batch size of the request that produced it (0: no batch dimension).
    batch_size: int
    correlation_id: int | str = 0
    flags: int = 0
    #: Whether a step produced it (its sequence parameters then go to the response).
    from_step: bool = False
    #: Readers still to come; the value is dropped after the last one.
    remaining: int = 0


class _Run:
    """The execution of one ensemble request: its tensors, running steps and responses."""

    def __init__(self, model: EnsembleModel, request: InferenceRequest) -> None:
        self.server = model.server
        self.graph = model.graph
        self.config = model.config
        self.request = request
        self.decoupled = bool(model.config.model_transaction_policy.decoupled)
        self.requested = tuple(o.name for o in request.outputs) or tuple(self.graph.outputs)
        self.needed = self.graph.needed_steps(frozenset(self.requested))
        self.values: dict[str, dict[int, _Value]] = {}
        self.counters: dict[str, int] = {}
        self.launched: set[tuple[int, int]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight = 0
        self.error: KernelError | None = None
        #: The iterations answered (a decoupled ensemble answers once per iteration).
        self.answered: set[int] = set()
        self.final_sent = False
        self.finished = asyncio.Event()
        self.batch_size = self._batch_size()

    async def run(self) -> None:
        """Start the steps the request's inputs allow; return when every step has ended."""
        self.request.on_cancel(self._cancel)
        updated = []
        for name, tensor in self.request.inputs.items():
            updated.append((name, self._add(name, _Value(tensor, self.batch_size))))
        for name in self.graph.optional_inputs:
            if name not in self.request.inputs:
                updated.append((name, self._add(name, _Value(None, self.batch_size))))
        self._advance(updated)
        if self.inflight == 0:
            self._finish()
        try:
            await self.finished.wait()
        except asyncio.CancelledError:
            self._cancel()
            raise

    def _batch_size(self) -> int:
        if not self.graph.batching:
            return 0
        first = next(iter(self.request.inputs.values()), None)
        return first.shape[0] if first is not None and first.shape else 0

    def _cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    # --- tensors ---------------------------------------------------------------------

    def _add(self, name: str, value: _Value) -> int:
        """Store a new iteration of tensor ``name``; returns its iteration number."""
        iteration = self.counters.get(name, 0)
        self.counters[name] = iteration + 1
        readers = sum(1 for i in self.graph.consumers.get(name, ()) if i in self.needed)
        value.remaining = readers + (name in self.requested)
        self.values.setdefault(name, {})[iteration] = value
        return iteration

    def _take(self, name: str, iteration: int) -> _Value:
        """A value for one of its readers; the last reader drops it."""
        value = self.values[name][iteration]
        value.remaining -= 1
        if value.remaining <= 0:
            del self.values[name][iteration]
        return value

    def _has(self, name: str, iteration: int) -> bool:
        return iteration in self.values.get(name, {})

    def _advance(self, updated: list[tuple[str, int]]) -> None:
        """Launch the steps that ``updated`` tensors complete, then answer if outputs are."""
        if self.error is not None:
            return
        for name, iteration in updated:
            for index in self.graph.consumers.get(name, ()):
                step = self.graph.steps[index]
                if (
                    index in self.needed
                    and (index, iteration) not in self.launched
                    and all(self._has(t, iteration) for t in step.inputs.values())
                ):
                    self._launch(step, iteration)
        for name, iteration in updated:
            if (
                name in self.requested
                and iteration not in self.answered
                and all(self._has(t, iteration) for t in self.requested)
            ):
                self._respond(iteration)

    # --- steps -----------------------------------------------------------------------

    def _launch(self, step: Step, iteration: int) -> None:
        self.launched.add((step.index, iteration))
        self.inflight += 1
        request, batch_sizes = self._step_request(step, iteration)
        task = asyncio.create_task(self._run_step(step, request, batch_sizes))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _step_request(self, step: Step, iteration: int) -> tuple[InferenceRequest, dict[str, int]]:
        """The request to a composing model (with the ensemble request's settings), and the
        batch size each input was produced with."""
        inputs: dict[str, Tensor] = {}
        batch_sizes: dict[str, int] = {}
        correlation_id, flags = self.request.correlation_id, self.request.flags
        for input_name, tensor_name in step.inputs.items():
            value = self._take(tensor_name, iteration)
            if value.from_step:
                correlation_id, flags = value.correlation_id, value.flags
            if value.tensor is not None:
                inputs[input_name] = Tensor(input_name, value.tensor.datatype, value.tensor.data)
                batch_sizes[input_name] = value.batch_size
        request = InferenceRequest(
            step.model_name,
            inputs,
            model_version=step.model_version,
            id=self.request.id,
            outputs=[RequestedOutput(name) for name in step.outputs],
            parameters=dict(self.request.parameters),
            correlation_id=correlation_id,
            flags=flags,
            priority=self.request.priority,
            timeout_us=self.request.timeout_us,
        )
        return request, batch_sizes

    async def _run_step(
        self, step: Step, request: InferenceRequest, batch_sizes: dict[str, int]
    ) -> None:
        """Run one step to its last response; the step ends exactly once."""
        ended = False
        try:
            model = self.server.model(step.model_name, step.model_version)
            batch_size = _adapt_inputs(request, model.config, batch_sizes)
            if model.config.model_transaction_policy.decoupled:
                async with aclosing(self.server.infer_stream(request)) as responses:
                    async for response in responses:
                        if response.error is not None:
                            raise response.error
                        ended = response.final
                        self._consume(step, request, response, batch_size, ended)
                if not ended:
                    ended = True
                    self._consume(step, request, None, batch_size, True)
            else:
                response = await self.server.infer(request, model)
                ended = True
                self._consume(step, request, response, batch_size, True)
        except KernelError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a kernel bug must not leave the request waiting
            log.exception("ensemble '%s' failed in step %d", self.config.name, step.index)
            self._fail(Internal(f"step {step.index} failed: {exc}"))
        finally:
            if not ended:
                self._step_ended()

    def _consume(
        self,
        step: Step,
        request: InferenceRequest,
        response: InferenceResponse | None,
        batch_size: int,
        final: bool,
    ) -> None:
        """Store a step response's outputs as ensemble tensors and move the DAG on."""
        if final:
            self.inflight -= 1
        updated = []
        if response is not None and not response.flag_only:
            correlation_id, flags = _sequence_of(response, request)
            produced = {tensor.name: tensor for tensor in response.outputs}
            for output_name, tensor_name in step.outputs.items():
                tensor = produced.get(output_name)
                if tensor is not None:
                    tensor = Tensor(tensor_name, tensor.datatype, tensor.data)
                value = _Value(tensor, batch_size, correlation_id, flags, from_step=True)
                updated.append((tensor_name, self._add(tensor_name, value)))
        self._advance(updated)
        if self.inflight == 0:
            self._finish()

    def _step_ended(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._finish()

    # --- answers ---------------------------------------------------------------------

    def _respond(self, iteration: int) -> None:
        self.answered.add(iteration)
        outputs, parameters = [], {}
        for name in self.requested:
            value = self._take(name, iteration)
            if value.tensor is None:
                continue  # the composing model did not produce it (Triton skips it too)
            dims = self.graph.outputs.get(name, ())
            data = reshape_for(dims, self.batch_size != 0, value.batch_size, value.tensor.data)
            outputs.append(Tensor(name, value.tensor.datatype, data))
            if value.from_step:
                parameters = self._sequence_parameters(value)
        response = InferenceResponse(self.config.name, "", outputs=outputs, parameters=parameters)
        if self.decoupled:
            self.final_sent = self.inflight == 0
            self.request.send(response, final=self.final_sent)
        else:
            self.request.respond(response)

    def _sequence_parameters(self, value: _Value) -> dict[str, Any]:
        """Triton reports the sequence a step's output belongs to, typed as the request's id."""
        correlation_id = value.correlation_id
        if isinstance(self.request.correlation_id, str):
            correlation_id = str(correlation_id)
        elif not isinstance(correlation_id, int):
            correlation_id = 0
        return {
            "sequence_id": correlation_id,
            "sequence_start": bool(value.flags & SEQUENCE_START),
            "sequence_end": bool(value.flags & SEQUENCE_END),
        }

    def _fail(self, error: KernelError) -> None:
        """The first step error fails the request at once; running steps may finish."""
        if self.error is None:
            self.error = KernelError.from_code(
                error.code, f"in ensemble '{self.config.name}', {error.message}"
            )
            self.request.fail(self.error)

    def _finish(self) -> None:
        """No step is running: end the response stream, or report that outputs never came."""
        if self.finished.is_set():
            return
        if self.request.cancelled:
            pass
        elif self.error is None and not self.answered and not self.decoupled:
            request_id = self.request.id or "<id_unknown>"
            self._fail(
                InvalidArgument(
                    f"[request id: {request_id}] unexpected deadlock, at least one output is "
                    "not set while no more ensemble steps can be made"
                )
            )
        elif self.error is None and self.decoupled and not self.final_sent:
            self.request.send(None, final=True)
        self.finished.set()


def _adapt_inputs(request: InferenceRequest, config: Any, batch_sizes: dict[str, int]) -> int:
    """Reshape inputs for the composing model's batching; returns the step's batch size."""
    batching = config.max_batch_size > 0
    dims = {t.name: tuple(t.dims) for t in config.input}
    for name, tensor in request.inputs.items():
        if name in dims:
            tensor.data = reshape_for(dims[name], batching, batch_sizes[name], tensor.data)
    first = next(iter(request.inputs.values()), None)
    return first.shape[0] if batching and first is not None and first.shape else 0


def _sequence_of(response: InferenceResponse, request: InferenceRequest) -> tuple[int | str, int]:
    """The sequence a step's output continues: the response's own, else its request's."""
    parameters = response.parameters
    if not any(k in parameters for k in ("sequence_id", "sequence_start", "sequence_end")):
        return request.correlation_id, request.flags
    flags = sequence_flags(parameters)
    return parameters.get("sequence_id", request.correlation_id), flags
