"""Security properties of the rendered chart: hardened pods and least-privilege RBAC."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.helm

# Whether the operator is granted exactly what its code uses is judged on its real requests:
# tests/controller/test_rbac_audit.py (the emulator's request audit against these rules).


def operator_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules of the roles bound to the operator's ServiceAccount (tenant roles excluded)."""
    bound = {
        (binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for binding in objects
        if binding["kind"] in {"ClusterRoleBinding", "RoleBinding"}
    }
    return [
        rule
        for role in objects
        if role["kind"] in {"ClusterRole", "Role"} and (role["kind"], role["metadata"]["name"]) in bound
        for rule in role["rules"]
    ]


def test_no_wildcards_and_no_secrets_anywhere(objects: list[dict]) -> None:
    for role in (o for o in objects if o["kind"] in {"ClusterRole", "Role"}):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard in {key}"
            assert "secrets" not in rule["resources"]
            assert "nonResourceURLs" not in rule


def test_tenants_cannot_write_status_or_policies(objects: list[dict]) -> None:
    tenant_roles = [o for o in objects if o["kind"] == "ClusterRole" and "tenant" in o["metadata"]["name"]]
    for role in tenant_roles:
        for rule in role["rules"]:
            writes = set(rule["verbs"]) - {"get", "list", "watch"}
            if writes:
                assert set(rule["resources"]) == {"gpuworkloads"}
            # A tenant granting itself a guarantee would defeat it: no verb at all on GPUQuotas.
            assert not {"gpuquotas", "gpuquotas/status"} & set(rule["resources"])


def test_operator_pod_is_hardened(objects: list[dict]) -> None:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
        assert context.get("privileged", False) is False
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_one_decider_by_default_and_peering_when_replicated(rendered_by_value_set: dict) -> None:
    (default,) = [o for o in rendered_by_value_set["defaults"] if o["kind"] == "Deployment"]
    assert default["spec"]["replicas"] == 1 and default["spec"]["strategy"]["type"] == "Recreate"
    assert not any(a.startswith("--peering") for a in default["spec"]["template"]["spec"]["containers"][0]["args"])
    (replicated,) = [o for o in rendered_by_value_set["everything-on"] if o["kind"] == "Deployment"]
    assert "--peering=gpuadmit" in replicated["spec"]["template"]["spec"]["containers"][0]["args"]
