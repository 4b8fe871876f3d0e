"""Gathered batches for Python models: one request per same-shaped group, split back after.

Triton hands a Python model's ``execute`` the dynamic batcher's requests as a list, and
a model that wants one array must stack them itself. A model that opts in with

    parameters { key: "gather_requests" value: { string_value: "true" } }

receives instead one request per group of compatible requests, its inputs concatenated
along the batch dimension; the server cuts each output of the group's response back
into per-request views (no copy) and answers every original request. Requests that do
not fit a group (other shapes past the batch dimension, datatypes, requested outputs or
parameters; sequence controls; inputs in CUDA shared memory) reach the model as they
came, so a batch may hold several gathered requests and singletons (a ragged batch).

Unchanged model code still works: an ``execute`` that loops over requests now loops
over fewer, larger ones. Decoupled models are never gathered (a response stream belongs
to one client), nor are sequence-batched models (each request carries its sequence's
controls). Statistics are unaffected: the scheduler counts the original requests and
the one execution before the batch reaches this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, final

import numpy as np

from triton_kernel.kernel.errors import Internal, InvalidArgument, KernelError
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.kernel.tensor import Tensor

log = logging.getLogger(__name__)

#: The model configuration parameter that turns gathering on.
PARAMETER = "gather_requests"
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "")


def gather_option(config: Any) -> bool:
    """Whether the model's requests are gathered; a value that cannot work fails the load."""
    if PARAMETER not in config.parameters:
        return False
    value = config.parameters[PARAMETER].string_value.strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        raise InvalidArgument(
            f"model '{config.name}': parameter '{PARAMETER}' must be \"true\" or \"false\", "
            f'not "{config.parameters[PARAMETER].string_value}"'
        )
    if config.max_batch_size <= 0:
        raise InvalidArgument(
            f"model '{config.name}': parameter '{PARAMETER}' needs a batching model "
            f"(max_batch_size > 0): requests are gathered along the batch dimension"
        )
    if config.model_transaction_policy.decoupled or config.HasField("sequence_batching"):
        kind = "decoupled" if config.model_transaction_policy.decoupled else "sequence-batched"
        log.warning(
            "model '%s' is %s: its requests are not gathered ('%s' ignored)",
            config.name,
            kind,
            PARAMETER,
        )
        return False
    return True


def gather(requests: Sequence[InferenceRequest]) -> Sequence[InferenceRequest]:
    """The batch as the model sees it: one request per group, in order of first arrival."""
    if len(requests) < 2:
        return requests
    groups: dict[tuple[Any, ...], list[InferenceRequest]] = {}
    order: list[InferenceRequest | list[InferenceRequest]] = []
    for request in requests:
        key = _group_key(request)
        if key is None:
            order.append(request)
            continue
        group = groups.get(key)
        if group is None:
            group = groups[key] = []
            order.append(group)
        group.append(request)
    if len(order) == len(requests):  # nothing to gather
        return requests
    return [_one(item) for item in order]


def _one(item: InferenceRequest | list[InferenceRequest]) -> InferenceRequest:
    if isinstance(item, InferenceRequest):
        return item
    return item[0] if len(item) == 1 else GatheredRequest(item)


def _group_key(request: InferenceRequest) -> tuple[Any, ...] | None:
    """What requests must share to be gathered, or None when ``request`` stays alone."""
    if request.correlation_id or request.flags or request.response_hook is not None:
        return None
    inputs = []
    rows = None
    for name, tensor in request.inputs.items():
        shape = tensor.data.shape
        # a subclass (CUDA shared memory) would be copied to host: leave it as it came
        if type(tensor) is not Tensor or not shape or (rows is not None and shape[0] != rows):
            return None
        rows = shape[0]
        inputs.append((name, tensor.datatype, shape[1:]))
    if rows is None:
        return None
    outputs = tuple(output.name for output in request.outputs)
    parameters = json.dumps(request.parameters, sort_keys=True) if request.parameters else ""
    return tuple(inputs), outputs, parameters


@final
class GatheredRequest(InferenceRequest):
    """A group of requests run as one: its response is split back to each of them.

    It has no caller of its own: answering it answers its members, and it is done
    (or cancelled) once all of them are.
    """

    __slots__ = ("members", "rows")

    def __init__(self, members: list[InferenceRequest]) -> None:
        first = members[0]
        inputs = {
            name: Tensor(
                name, tensor.datatype, np.concatenate([m.inputs[name].data for m in members])
            )
            for name, tensor in first.inputs.items()
        }
        super().__init__(
            first.model_name,
            inputs,
            model_version=first.model_version,
            outputs=first.outputs,
            parameters=first.parameters,
        )
        #: The original requests, in batch order.
        self.members = members
        #: How many batch rows each member brought.
        self.rows = [next(iter(m.inputs.values())).data.shape[0] for m in members]

    @property
    def cancelled(self) -> bool:
        return all(member.cancelled for member in self.members)

    @property
    def done(self) -> bool:
        return all(member.done for member in self.members)

    def respond(self, response: InferenceResponse) -> None:
        """Cut each output into the members' rows (views) and answer each member."""
        total = sum(self.rows)
        for tensor in response.outputs:
            shape = tensor.data.shape
            if not shape or shape[0] != total:
                self.fail(
                    Internal(
                        f"model '{self.model_name}' ({PARAMETER}): output '{tensor.name}' has "
                        f"shape {list(shape)}: its first dimension must be the gathered batch "
                        f"of {total} rows ({len(self.members)} requests)"
                    )
                )
                return
        start = 0
        for member, rows in zip(self.members, self.rows, strict=True):
            end = start + rows
            outputs = [Tensor(t.name, t.datatype, t.data[start:end]) for t in response.outputs]
            member.respond(
                InferenceResponse(
                    response.model_name,
                    response.model_version,
                    outputs=outputs,
                    parameters=dict(response.parameters),
                )
            )
            start = end

    def send(self, response: InferenceResponse | None, *, final: bool) -> bool:
        """Only decoupled models send; they are never gathered, but answer all the same."""
        if response is None or response.error is not None:
            self.fail(response.error if response is not None and response.error else _no_response())
        else:
            self.respond(response)
        return False

    def fail(self, error: KernelError) -> None:
        for member in self.members:
            member.fail(error)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every member's caller has stopped waiting."""
        remaining = [len(self.members)]

        def one_gone() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                callback()

        for member in self.members:
            member.on_cancel(one_gone)


def _no_response() -> KernelError:
    return Internal("the model sent no response")
