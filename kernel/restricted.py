"""Triton's restricted API groups: which calls must carry which header.

``--http-restricted-api=<group>[,<group>...]:<key>=<value>`` (and gRPC's
``--grpc-restricted-protocol``, whose header is ``triton-grpc-protocol-<key>``) make
every call of those groups carry the header ``<key>: <value>``. Parsed once, at start;
the frontends decide per route or method which restriction applies, so an unrestricted
call costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidArgument

#: Triton's groups (``src/restricted_features.h``), in its order.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)

#: gRPC metadata key prefix of a restricted protocol's header.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True, slots=True)
class Restriction:
    """The header (and its exact value) a call of a restricted group must carry."""

    header: str
    value: str


def parse_restrictions(
    specs: Iterable[str], *, option: str, kind: str, prefix: str = ""
) -> dict[str, Restriction]:
    """Group -> restriction for ``specs``; a bad spec raises with tritonserver's text.

    ``option`` is the flag's name (``http-restricted-api``), ``kind`` the word Triton's
    messages use for a group (``api`` or ``protocol``), ``prefix`` what goes before the
    key in the header's name.
    """
    restrictions: dict[str, Restriction] = {}
    for spec in specs:
        names, key, value = _split(spec, option)
        for name in names.split(","):
            if name not in GROUPS:
                raise InvalidArgument(f"unknown restricted {kind} '{name}'")
            if name in restrictions:
                raise InvalidArgument(
                    f"restricted {kind} '{name}' can not be specified in multiple config groups"
                )
            restrictions[name] = Restriction(prefix + key, value)
    return restrictions


def http_restrictions(specs: Iterable[str]) -> dict[str, Restriction]:
    """``--http-restricted-api`` values: the header is ``<key>`` itself."""
    return parse_restrictions(specs, option="http-restricted-api", kind="api")


def grpc_restrictions(specs: Iterable[str]) -> dict[str, Restriction]:
    """``--grpc-restricted-protocol`` values: the header is ``triton-grpc-protocol-<key>``."""
    return parse_restrictions(
        specs, option="grpc-restricted-protocol", kind="protocol", prefix=GRPC_HEADER_PREFIX
    )


def check_restriction_options(http: Iterable[str], grpc: Iterable[str]) -> None:
    """Raise tritonserver's error for the first bad restriction flag, before anything starts."""
    http_restrictions(http)
    grpc_restrictions(grpc)


def _split(spec: str, option: str) -> tuple[str, str, str]:
    """``<names>:<key>=<value>`` as Triton splits it: the first ``:``, then the next ``=``."""
    names, colon, setting = spec.partition(":")
    key, equals, value = setting.partition("=")
    if not (colon and equals and names and key and value):
        raise InvalidArgument(
            f"--{option} option format is '<config name>:<setting>=<value>'. Got {spec}"
        )
    return names, key, value
