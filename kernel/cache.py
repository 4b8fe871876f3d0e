"""The response cache: Triton's ``local`` cache, an LRU of responses bounded by bytes.

A model opts in with ``response_cache { enable: true }`` and the server with
``--cache-config=local,size=<bytes>``; both are needed. A request is identified by its
model, version and inputs, sorted by name (Triton's key also ignores parameters,
requested outputs, priority, timeout and sequence flags). Unlike Triton's, the key also
holds each input's datatype and shape: Triton hashes only names and bytes, so that an
input reshaped from [1,4] to [2,2] gets the other shape's response.

Sizes follow Triton's so that the same ``size`` holds the same entries: an entry costs
its packed size (Triton's ``CacheEntry`` layout) plus what its allocator adds, measured
against tritonserver 2.51 (see ``ENTRY_OVERHEAD``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Internal, InvalidArgument
from .request import InferenceRequest
from .tensor import Tensor

log = logging.getLogger(__name__)

#: The one cache implementation this server provides (Triton's default).
LOCAL = "local"
#: Bytes of a ``local`` cache that hold its own bookkeeping, not entries (tritonserver 2.51).
CACHE_OVERHEAD = 128
#: Bytes each entry costs beyond its packed size (the allocator's block header).
ENTRY_OVERHEAD = 24
#: Below this ``size`` tritonserver cannot create a ``local`` cache.
MIN_SIZE = 192

_INIT_FAILED = "Failed to initialize LocalCache: "


@dataclass(slots=True, frozen=True)
class _Entry:
    #: The cached outputs: read-only copies, shared by every hit.
    outputs: tuple[Tensor, ...]
    #: What the entry takes of the cache's size.
    cost: int


class ResponseCache:
    """Responses by request key, evicting the least recently used to stay within ``size``."""

    __slots__ = ("_capacity", "_entries", "_used", "size")

    def __init__(self, size: int) -> None:
        if size < MIN_SIZE:
            raise InvalidArgument(
                f"{_INIT_FAILED}size {size} is too small: a cache needs at least {MIN_SIZE} bytes"
            )
        #: The ``size`` setting, in bytes.
        self.size = size
        self._capacity = size - CACHE_OVERHEAD
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._used = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        """Bytes the entries take, bookkeeping included."""
        return self._used

    def lookup(self, key: bytes) -> list[Tensor] | None:
        """The cached outputs for ``key`` (fresh ``Tensor``s over shared arrays), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return [Tensor(t.name, t.datatype, t.data) for t in entry.outputs]

    def insert(self, key: bytes, outputs: list[Tensor]) -> bool:
        """Cache ``outputs`` under ``key``; False when the key is already cached.

        Raises ``Internal`` when the entry cannot be cached (Triton logs it and the
        request still succeeds): an empty output, or an entry larger than the cache.
        Making room evicts least recently used entries first, as Triton's does, even
        when the entry then still does not fit.
        """
        if key in self._entries:
            return False
        cost = packed_size(outputs) + ENTRY_OVERHEAD
        if cost - ENTRY_OVERHEAD > self.size:
            raise Internal(
                f"Requested byte_size: {cost - ENTRY_OVERHEAD} is greater than total cache "
                f"size: {self.size}"
            )
        while self._used + cost > self._capacity:
            if not self._entries:
                raise Internal("Cache is empty, nothing to evict.")
            _, evicted = self._entries.popitem(last=False)
            self._used -= evicted.cost
        self._entries[key] = _Entry(tuple(_frozen(t) for t in outputs), cost)
        self._used += cost
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._used = 0


def request_key(request: InferenceRequest, model_name: str, version: int) -> bytes:
    """What makes two requests the same for the cache: model, version and inputs."""
    digest = hashlib.blake2b(digest_size=32)
    _update(digest, model_name.encode())
    _update(digest, str(version).encode())
    for name in sorted(request.inputs):
        tensor = request.inputs[name]
        _update(digest, name.encode())
        _update(digest, tensor.datatype.encode())
        _update(digest, ",".join(map(str, tensor.shape)).encode())
        _update(digest, tensor.to_bytes())
    return digest.digest()


def _update(digest: Any, data: bytes | memoryview) -> None:
    """Length-prefixed, so that no two different sequences of fields hash alike."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def packed_size(outputs: list[Tensor]) -> int:
    """Triton's serialized size of a response: an output count, then per output its
    total size, name, datatype, shape and data, each length-prefixed."""
    size = 4
    for tensor in outputs:
        nbytes = len(tensor.to_bytes())
        if nbytes == 0:
            raise Internal(f"output '{tensor.name}' is empty: empty outputs are not cached")
        size += 8 + 4 + len(tensor.name.encode()) + 4 + len(tensor.datatype)
        size += 4 + 8 * len(tensor.shape) + 8 + nbytes
    return size


def _frozen(tensor: Tensor) -> Tensor:
    """A private, read-only copy: later hits share it, and nobody may change it."""
    data = np.array(tensor.data, copy=True)
    data.flags.writeable = False
    return Tensor(tensor.name, tensor.datatype, data)


def create_cache(config: Mapping[str, Mapping[str, str]]) -> ResponseCache | None:
    """The cache ``--cache-config`` asks for (cache name -> settings), or None for none."""
    if not config:
        return None
    if len(config) > 1:
        raise InvalidArgument(
            f"only one response cache can be configured, got: {', '.join(sorted(config))}"
        )
    name, settings = next(iter(config.items()))
    if name != LOCAL:
        raise InvalidArgument(
            f"unable to find cache '{name}': this server provides only the '{LOCAL}' cache"
        )
    cache = ResponseCache(_parse_size(settings))
    for key in settings:
        if key != "size":
            log.warning("ignoring unknown setting '%s' of the '%s' cache", key, LOCAL)
    return cache


def _parse_size(settings: Mapping[str, str]) -> int:
    if "size" not in settings:
        raise InvalidArgument(f"{_INIT_FAILED}config didn't contain a valid 'size' field.")
    text = settings["size"].strip()
    if not text.isdigit():
        raise InvalidArgument(
            f"{_INIT_FAILED}'size' must be a number of bytes (an unsigned integer), "
            f"got '{settings['size']}'"
        )
    return int(text)
