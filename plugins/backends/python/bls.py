"""BLS on the server side: a Python model's ``InferenceRequest.exec()`` run on the server.

The worker sends the request; it runs through the in-process ``Server`` like any
other, and each response goes back encoded as the worker encodes its own:
``("ok", outputs, parameters)`` or ``("error", code, message)``, with whether it is
the last. Failures are answered, never raised: the model sees ``has_error()``, with
Triton's texts (a request refused before it runs is prefixed with
``Model <name> - Error when running inference: ``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from triton_kernel.kernel.datatypes import datatype_of
from triton_kernel.kernel.errors import (
    ErrorCode,
    InvalidArgument,
    KernelError,
    Unavailable,
    Unsupported,
)
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse, RequestedOutput
from triton_kernel.kernel.tensor import Tensor

#: An encoded response and whether it is the request's last.
Reply = tuple[tuple[Any, ...], bool]

#: The last response of a decoupled model that sent its FINAL flag alone (Triton: empty).
_EMPTY: tuple[Any, ...] = ("ok", [], {})


async def run(server: Any, payload: dict[str, Any], decoupled: bool) -> AsyncIterator[Reply]:
    """Yield every response of one BLS request; the last one says so.

    ``decoupled``: the caller used ``exec(decoupled=True)`` and takes many responses.
    """
    name = payload["model_name"]
    try:
        request = _request(server, payload, decoupled)
        responses = server.infer_stream(request)
    except KernelError as exc:
        yield _refused(name, exc), True
        return
    last = False
    try:
        async for response in responses:
            last = response.final
            yield _encode(response), last
    except KernelError as exc:
        last = True
        yield ("error", exc.code.value, exc.message), True
    if not last:
        yield _EMPTY, True


def _request(server: Any, payload: dict[str, Any], decoupled: bool) -> InferenceRequest:
    """The kernel's request for ``payload``, refused as Triton's Python backend refuses it."""
    name, version = payload["model_name"], payload["model_version"]
    if server is None:
        raise Unavailable("BLS requests need the server, which did not give one to the backend")
    if not server.model_ready(name, version):
        raise Unavailable(f"Failed for execute the inference request. Model '{name}' is not ready.")
    model = server.model(name, version)
    if model.config.model_transaction_policy.decoupled and not decoupled:
        raise Unsupported(
            f"Model {name} is using the decoupled. The current BLS request call doesn't "
            "support models using the decoupled transaction policy. Please use "
            "'decoupled=True' argument to the 'exec' or 'async_exec' calls for decoupled "
            "models.'"
        )
    inputs = {n: Tensor(n, datatype_of(array), array) for n, array in payload["inputs"]}
    return InferenceRequest(
        name,
        inputs,
        model_version=version,
        id=payload["id"],
        outputs=[RequestedOutput(n) for n in payload["outputs"]],
        parameters=_parameters(payload["parameters"]),
        correlation_id=payload["correlation_id"],
        flags=payload["flags"],
        timeout_us=payload["timeout"],
    )


def _parameters(text: str) -> dict[str, Any]:
    """Request parameters as Triton takes them from a BLS request: strings, ints, bools."""
    try:
        parameters = json.loads(text or "{}")
    except ValueError:
        parameters = None
    if not isinstance(parameters, dict):
        raise InvalidArgument("Unable to parse the parameters of the request as JSON")
    if any(not isinstance(value, (str, int, bool)) for value in parameters.values()):
        raise InvalidArgument("Unsupported value type on parameters")
    return parameters


def _refused(name: str, error: KernelError) -> tuple[Any, ...]:
    """Triton reports every refusal of a BLS request as INTERNAL, naming the model."""
    message = f"Model {name} - Error when running inference: {error.message}"
    return ("error", ErrorCode.INTERNAL.value, message)


def _encode(response: InferenceResponse) -> tuple[Any, ...]:
    if response.error is not None:
        return ("error", response.error.code.value, response.error.message)
    if response.flag_only:
        return _EMPTY
    outputs = [(tensor.name, tensor.data) for tensor in response.outputs]
    return ("ok", outputs, response.parameters)
