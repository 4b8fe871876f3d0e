"""The wire definitions: same as Triton's (tritonclient's descriptors), and not stale."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from triton_kernel.protocols.proto import generate
from triton_kernel.protocols.proto.generated import inference
from triton_kernel.protocols.proto.generated.grpc.health import v1 as health
from triton_kernel.protocols.proto.pool import POOL

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


# --- compatibility with tritonclient's descriptors ------------------------------------


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _field_facts(field: FieldDescriptor) -> tuple:
    oneof = field.containing_oneof.name if field.containing_oneof else None
    type_name = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        _repeated(field),
        type_name.full_name if type_name else None,
        oneof,
    )


def _message_facts(message: Descriptor) -> dict[str, object]:
    """Every fact of a message that reaches the wire, nested messages and enums included."""
    facts: dict[str, object] = {}
    for field in message.fields:
        facts[f"{message.full_name}.{field.name}"] = _field_facts(field)
    for enum in message.enum_types:
        facts[enum.full_name] = [(v.name, v.number) for v in enum.values]
    for nested in message.nested_types:
        facts.update(_message_facts(nested))
    return facts


def _file_facts(file: FileDescriptor) -> dict[str, object]:
    facts: dict[str, object] = {"package": file.package}
    for message in file.message_types_by_name.values():
        facts.update(_message_facts(message))
    for enum in file.enum_types_by_name.values():
        facts[enum.full_name] = [(v.name, v.number) for v in enum.values]
    for service in file.services_by_name.values():
        for method in service.methods:
            facts[method.full_name] = (
                method.input_type.full_name,
                method.output_type.full_name,
                getattr(method, "client_streaming", None),
                getattr(method, "server_streaming", None),
            )
    return facts


def _streaming(file: FileDescriptor) -> dict[str, tuple[bool, bool]]:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return {
        f"{service.name}.{method.name}": (method.client_streaming, method.server_streaming)
        for service in proto.service
        for method in service.method
    }


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("grpc_service.proto", service_pb2.DESCRIPTOR),
        ("model_config.proto", model_config_pb2.DESCRIPTOR),
    ],
)
def test_descriptors_match_tritonclient(ours: str, theirs: FileDescriptor) -> None:
    our_facts = _file_facts(POOL.FindFileByName(ours))
    their_facts = _file_facts(theirs)
    assert sorted(set(their_facts) - set(our_facts)) == []  # nothing missing
    assert sorted(set(our_facts) - set(their_facts)) == []  # nothing invented
    differing = {
        k: (our_facts[k], their_facts[k]) for k in their_facts if our_facts[k] != their_facts[k]
    }
    assert differing == {}
    assert _streaming(POOL.FindFileByName(ours)) == _streaming(theirs)


def test_the_service_has_tritons_rpcs_in_order() -> None:
    service = POOL.FindServiceByName("inference.GRPCInferenceService")
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == [m.name for m in theirs.methods]
    assert _streaming(POOL.FindFileByName("grpc_service.proto"))[
        "GRPCInferenceService.ModelStreamInfer"
    ] == (True, True)


def _betterproto_facts(cls: type) -> dict[str, tuple[int, bool]]:
    meta = cls._betterproto.meta_by_field_name  # type: ignore[attr-defined]
    return {name: (m.number, m.repeated or m.proto_type == "map") for name, m in meta.items()}


def _descriptor_facts(message: Descriptor) -> dict[str, tuple[int, bool]]:
    return {f.name: (f.number, _repeated(f)) for f in message.fields}


@pytest.mark.parametrize(
    "name",
    [
        "ModelInferRequest",
        "ModelInferResponse",
        "ModelStreamInferResponse",
        "ModelStatistics",
        "RepositoryModelLoadRequest",
        "ModelConfig",
        "ModelDynamicBatching",
        "ModelSequenceBatching",
    ],
)
def test_betterproto_classes_carry_the_same_numbers(name: str) -> None:
    cls = getattr(inference, name)
    descriptor = POOL.FindMessageTypeByName(f"inference.{name}")
    assert _betterproto_facts(cls) == _descriptor_facts(descriptor)


def test_health_service_is_the_standard_one() -> None:
    assert health.HealthCheckRequest(service="x").SerializeToString() == b"\n\x01x"
    response = health.HealthCheckResponse.FromString(b"\x08\x02")
    assert response.status == health.HealthCheckResponseServingStatus.NOT_SERVING
    assert "/grpc.health.v1.Health/Check" in health.HealthBase().__mapping__()


# --- the generated code is up to date ------------------------------------------------


def _normalised(path: Path) -> str:
    """Descriptor modules compare as messages, Python modules as syntax trees."""
    text = path.read_text()
    if path.name.endswith("_descriptor.py"):
        namespace: dict[str, object] = {}
        exec(compile(text, str(path), "exec"), namespace)
        serialized = namespace["SERIALIZED"]
        assert isinstance(serialized, bytes)
        return str(descriptor_pb2.FileDescriptorProto.FromString(serialized))
    return ast.dump(ast.parse(text))


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate.generate(tmp_path)
    fresh = generate.generated_files(tmp_path)
    committed = generate.generated_files(generate.HERE)
    assert fresh == committed
    stale = [str(p) for p in fresh if _normalised(tmp_path / p) != _normalised(generate.HERE / p)]
    assert stale == [], "run: python -m triton_kernel.protocols.proto.generate"
