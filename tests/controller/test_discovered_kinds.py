"""Optional kinds (Kubeflow PyTorchJobs, KubeRay RayJobs) are listed and watched only where the
API server serves them (controller.restore.served_kinds, found by API discovery)."""

from __future__ import annotations

from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller import restore
from gpuadmit.controller.api import ApiError
from gpuadmit.controller.cache import PYTORCHJOB, RAYJOB


class DiscoveryApi:
    """Answers discovery as an API server does: a resource list per served group/version, 404 otherwise."""

    def __init__(self, served: dict[str, list[str]], failing: int | None = None) -> None:
        self.served = served
        self.failing = failing
        self.paths: list[str] = []

    async def request(self, verb: str, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.paths.append(path)
        if self.failing is not None:
            raise ApiError(verb, path, self.failing, "Failure", "no")
        group_version = path.removeprefix("/apis/")
        if group_version not in self.served:
            raise ApiError(verb, path, 404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "groupVersion": group_version,
                "resources": [{"name": name} for name in self.served[group_version]]}


async def test_only_the_served_kinds_are_watched() -> None:
    api = DiscoveryApi({"ray.io/v1": ["rayclusters", "rayjobs", "rayjobs/status"]})
    served = await restore.served_kinds(api)  # type: ignore[arg-type]
    assert served == [(RAYJOB, kube.RAYJOBS)]
    assert api.paths == ["/apis/kubeflow.org/v1", "/apis/ray.io/v1"]
    scopes = restore.watch_scopes((), served)
    assert (RAYJOB, kube.RAYJOBS, None) in scopes and not [s for s in scopes if s[0] == PYTORCHJOB]
    assert restore.watch_scopes(("a", "b"), served)[-2:] == [(RAYJOB, kube.RAYJOBS, "a"), (RAYJOB, kube.RAYJOBS, "b")]


async def test_a_group_served_without_the_resource_or_a_failing_discovery_is_not_watched() -> None:
    assert await restore.served_kinds(DiscoveryApi({"kubeflow.org/v1": ["tfjobs"]})) == []  # type: ignore[arg-type]
    assert await restore.served_kinds(DiscoveryApi({}, failing=503)) == []  # type: ignore[arg-type]
    # A failing discovery keeps what the last one found (a passing error stops no watch); a 404 does not.
    known = [(RAYJOB, kube.RAYJOBS)]
    assert await restore.served_kinds(DiscoveryApi({}, failing=503), known=known) == known  # type: ignore[arg-type]
    assert await restore.served_kinds(DiscoveryApi({}), known=known) == []  # type: ignore[arg-type]
    # Nothing served: the scopes are today's.
    assert restore.watch_scopes(()) == restore.watch_scopes((), [])
    assert not [s for s in restore.watch_scopes(()) if s[0] in (PYTORCHJOB, RAYJOB)]
