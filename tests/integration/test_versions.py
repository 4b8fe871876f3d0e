"""Version policies (latest N, all, specific), requests by version, per-version readiness and
metadata, and versions across reloads, as tritonserver 2.51 answers them over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server
from .test_model_control import (
    infer_grpc,
    infer_http,
    rows,
    set_factor,
    wait_for,
    wait_server_ready,
    write_controlled,
)

#: Model -> (policy, versions in the repository, versions served).
POLICIES = {
    "latest_two": ("version_policy { latest { num_versions: 2 } }", [1, 2, 3], [2, 3]),
    "every": ("version_policy { all { } }", [1, 2], [1, 2]),
    "chosen": ("version_policy { specific { versions: [ 1, 3 ] } }", [1, 2, 3], [1, 3]),
    "default": ("", [1, 2], [2]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("versions_repo")
    for name, (policy, versions, _) in POLICIES.items():
        write_controlled(repo, name, {v: float(v) for v in versions}, policy)
    running = start_server(repo, log_path=tmp_path_factory.mktemp("log") / "server.log")
    wait_server_ready(running)
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_policy_chooses_the_served_versions(server: RunningServer, name: str) -> None:
    served = [str(v) for v in POLICIES[name][2]]
    with server.client() as client, grpcclient.InferenceServerClient(server.grpc_url) as g:
        assert rows(client, name) == [
            {"name": name, "version": v, "state": "READY"} for v in served
        ]
        grpc_rows = g.get_model_repository_index(as_json=True)["models"]
        assert [r for r in grpc_rows if r["name"] == name] == rows(client, name)
        assert client.get_model_metadata(name)["versions"] == served
        assert g.get_model_metadata(name, as_json=True)["versions"] == served


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_requests_by_version(server: RunningServer, name: str) -> None:
    _, present, served = POLICIES[name]
    latest = str(max(served))
    with server.client() as client, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for infer, c in ((infer_http, client), (infer_grpc, g)):
            assert infer(c, name, [1.0]) == ([float(latest)], latest)
            for version in served:
                assert infer(c, name, [2.0], str(version)) == ([2.0 * version], str(version))
        for version in sorted({*present, 7} - set(served)):
            text = f"Request for unknown model: '{name}' version {version} is not found"
            with pytest.raises(InferenceServerException) as info:
                infer_http(client, name, [1.0], str(version))
            assert (info.value.status(), info.value.message()) == ("404", text)
            with pytest.raises(InferenceServerException) as info:
                infer_grpc(g, name, [1.0], str(version))
            assert info.value.status() == "StatusCode.NOT_FOUND"
            assert info.value.message() == text


def test_version_readiness(server: RunningServer) -> None:
    base = f"http://{server.url}/v2/models/chosen"
    with server.client() as client, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for version, ready in (("1", True), ("2", False), ("3", True), ("4", False)):
            reply = requests.get(f"{base}/versions/{version}/ready")
            assert reply.status_code == (200 if ready else 400)
            if not ready:
                assert reply.json() == {"error": "Model version not ready"}
            assert client.is_model_ready("chosen", version) is ready
            assert g.is_model_ready("chosen", version) is ready
        assert requests.get(f"{base}/ready").status_code == 200


def test_metadata_config_and_statistics_per_version(server: RunningServer) -> None:
    text = "Request for unknown model: 'latest_two' version 1 is not found"
    with server.client() as client, grpcclient.InferenceServerClient(server.grpc_url) as g:
        assert client.get_model_metadata("latest_two", "2")["versions"] == ["2"]
        assert g.get_model_metadata("latest_two", "3", as_json=True)["versions"] == ["3"]
        assert client.get_model_config("latest_two", "2")["name"] == "latest_two"
        for call in (client.get_model_metadata, client.get_model_config):
            with pytest.raises(InferenceServerException) as info:
                call("latest_two", "1")
            assert (info.value.status(), info.value.message()) == ("404", text)
        with pytest.raises(InferenceServerException) as info:
            g.get_model_metadata("latest_two", "1")
        assert (info.value.status(), info.value.message()) == ("StatusCode.NOT_FOUND", text)
        stats = client.get_inference_statistics("latest_two")["model_stats"]
        assert [s["version"] for s in stats] == ["2", "3"]
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics("latest_two", "1")
        assert info.value.message() == (
            "requested model version is not available for model 'latest_two'"
        )


def test_versions_with_the_aio_client(server: RunningServer) -> None:
    async def check() -> None:
        async with grpcaio.InferenceServerClient(server.grpc_url) as client:
            assert await client.is_model_ready("every", "2")
            assert not await client.is_model_ready("every", "3")
            metadata = await client.get_model_metadata("every", as_json=True)
            assert metadata["versions"] == ["1", "2"]

    asyncio.run(check())


# --- versions across reloads (explicit mode) -------------------------------------------------


@pytest.fixture(scope="module")
def explicit_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("explicit_versions")
    write_controlled(repo, "growing", {1: 1.0, 2: 2.0, 3: 3.0}, POLICIES["latest_two"][0])
    write_controlled(repo, "half_broken", {1: 1.0}, POLICIES["every"][0])
    set_factor(repo / "half_broken", 2, 2.0, broken=True)
    return repo


@pytest.fixture(scope="module")
def explicit(
    explicit_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    running = start_server(
        explicit_repo,
        "--model-control-mode=explicit",
        "--load-model=growing",
        log_path=tmp_path_factory.mktemp("log") / "server.log",
    )
    wait_server_ready(running)
    yield running
    assert running.stop() == 0, running.log()


def _states(server: RunningServer, name: str) -> dict[str, str]:
    with server.client() as client:
        return {r["version"]: r.get("reason") or r["state"] for r in rows(client, name)}


def test_a_new_version_loads_only_if_it_works(explicit: RunningServer, explicit_repo: Path) -> None:
    model_dir = explicit_repo / "growing"
    set_factor(model_dir, 4, 4.0, broken=True)
    with explicit.client() as client:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("growing")
        assert info.value.status() == "400"
        assert info.value.message().startswith(
            "load failed for model 'growing': version 4 is at UNAVAILABLE state: Internal: "
            "RuntimeError: broken on purpose"
        )
        states = _states(explicit, "growing")
        assert (states["2"], states["3"]) == ("READY", "READY")  # the served set is unchanged
        assert "broken on purpose" in states["4"]
        assert infer_http(client, "growing", [1.0]) == ([3.0], "3")
        set_factor(model_dir, 4, 4.0)
        client.load_model("growing")  # version 2 leaves the served set: it drains, then goes
        assert _states(explicit, "growing")["2"] in ("UNLOADING", "unloaded")
        expected = {"2": "unloaded", "3": "READY", "4": "READY"}
        wait_for(lambda: _states(explicit, "growing") == expected, "version 2 to unload")
        assert infer_http(client, "growing", [1.0]) == ([4.0], "4")
        assert client.get_model_metadata("growing")["versions"] == ["3", "4"]


def test_a_first_load_is_all_or_nothing(explicit: RunningServer) -> None:
    with explicit.client() as client, grpcclient.InferenceServerClient(explicit.grpc_url) as g:
        with pytest.raises(InferenceServerException) as info:
            g.load_model("half_broken")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "version 2 is at UNAVAILABLE state: Internal: RuntimeError" in info.value.message()
        states = _states(explicit, "half_broken")
        assert states["1"] == "unloaded"  # it loaded, and was unloaded with the failed load
        assert "broken on purpose" in states["2"]
        assert not client.is_model_ready("half_broken")
        assert not g.is_model_ready("half_broken", "1")
