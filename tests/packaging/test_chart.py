"""The Helm chart, rendered and linted by Helm's own SDK, validated against Kubernetes schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gpuadmit.controller.webhook_configs import WEBHOOKS, webhook_configurations
from tools.render_chart import RELEASE_NAMESPACE, render_chart, rendered_objects

from .conftest import CHART_DIR, REPO, VALUE_SETS, load_values

pytestmark = pytest.mark.helm

KUBERNETES_VERSIONS = ["1.29.0", "1.31.0"]
# Kinds defined by CRDs: validated against those CRDs' schemas (ours) or minimal schemas of the fields we set.
CUSTOM_KINDS = {"MarginPolicy", "ServiceMonitor", "PrometheusRule", "Certificate", "Issuer", "ClusterKopfPeering", "KopfPeering"}


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {obj["kind"] for obj in objects}


def only(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean_in_strict_mode(name: str) -> None:
    import helm_python as helm

    report = helm.lint(str(CHART_DIR), load_values(name), strict=True, namespace="gpuadmit-system")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_has_the_operator_and_no_optional_parts(rendered_by_value_set: dict) -> None:
    assert kinds(rendered_by_value_set["defaults"]) == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "MarginPolicy",
    }


def test_everything_on_renders_every_optional_part(rendered_by_value_set: dict) -> None:
    assert {
        "ServiceMonitor", "PrometheusRule", "ConfigMap", "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration", "Secret", "NetworkPolicy", "PodDisruptionBudget",
    } <= kinds(rendered_by_value_set["everything-on"])
    assert {"Certificate", "Issuer", "Role", "RoleBinding", "KopfPeering"} <= kinds(rendered_by_value_set["namespaced-certmanager"])
    (peering,) = only(rendered_by_value_set["everything-on"], "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "gpuadmit"  # the name --peering is given


def test_the_network_policy_lets_only_the_api_server_reach_the_webhook_port_when_told_its_addresses(
    rendered_by_value_set: dict,
) -> None:
    (policy,) = only(rendered_by_value_set["everything-on"], "NetworkPolicy")
    rules = {tuple(port["port"] for port in rule["ports"]): rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {("metrics",), ("health",), ("webhook",)}
    assert rules[("webhook",)]["from"] == [
        {"ipBlock": {"cidr": "10.0.0.0/24"}},
        {"ipBlock": {"cidr": "fd00::/64"}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
    ]
    assert "from" not in rules[("health",)]


def test_without_api_server_addresses_the_webhook_port_stays_reachable() -> None:
    objects = rendered_objects(render_chart(CHART_DIR, {"networkPolicy": {"enabled": True}, "webhooks": {"enabled": True}}))
    (policy,) = only(objects, "NetworkPolicy")
    webhook_rules = [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "webhook"]
    assert webhook_rules and "from" not in webhook_rules[0]  # an API server of unknown address must get through


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_builtin_manifest_is_valid_for_kubernetes(objects: list[dict], kubernetes_version: str) -> None:
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_the_crds_are_valid_for_kubernetes(kubernetes_version: str) -> None:
    crd_files = sorted((CHART_DIR / "crds").glob("*.yaml"))
    assert [p.name for p in crd_files] == [
        "clusterkopfpeerings.kopf.dev.yaml", "gpuquotas.gpuadmit.io.yaml", "gpuworkloads.gpuadmit.io.yaml",
        "kopfpeerings.kopf.dev.yaml", "marginpolicies.gpuadmit.io.yaml",
    ]
    for path in crd_files:
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), kubernetes_version, strict=True)


def test_chart_crds_are_identical_to_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert top and chart == top, "charts/gpuadmit/crds must be a copy of crds/ (run: cp crds/*.yaml charts/gpuadmit/crds/)"


def test_rendered_margin_policy_is_valid_against_its_crd(objects: list[dict]) -> None:
    crd = yaml.safe_load((REPO / "crds" / "marginpolicies.gpuadmit.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for policy in only(objects, "MarginPolicy"):
        jsonschema.validate(policy, _without_kubernetes_extensions(schema))


def _without_kubernetes_extensions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_kubernetes_extensions(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_without_kubernetes_extensions(v) for v in schema]
    return schema


def test_prometheus_rule_carries_the_alert_rule_file(rendered_by_value_set: dict) -> None:
    (rule,) = only(rendered_by_value_set["everything-on"], "PrometheusRule")
    rule_text = (CHART_DIR / "files" / "gpuadmit-alerts.yaml").read_text()
    # The one value the chart sets: the unmet-guarantee threshold (everything-on asks for 1800 s).
    assert "(gpuadmit_quota_unmet_guarantee_seconds) > 900" in rule_text
    rule_file = yaml.safe_load(rule_text.replace("(gpuadmit_quota_unmet_guarantee_seconds) > 900", "(gpuadmit_quota_unmet_guarantee_seconds) > 1800"))
    assert rule["spec"] == rule_file
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_is_labelled_for_the_grafana_sidecar(rendered_by_value_set: dict) -> None:
    (config_map,) = only(rendered_by_value_set["everything-on"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (CHART_DIR / "files" / "gpuadmit-dashboard.json").read_text()
    assert config_map["data"]["gpuadmit-dashboard.json"] == dashboard.rstrip("\n")


def test_values_schema_rejects_wrong_types() -> None:
    import helm_python as helm

    chart = helm.Chart.load(str(CHART_DIR))
    chart.validate_schema({})
    for bad in (
        {"replicaCount": "two"},
        {"webhooks": {"failurePolicy": "Sometimes"}},
        {"webhooks": {"nativeWorkloads": {"failurePolicy": "Never"}}},
        {"webhooks": {"nativeWorkloads": {"enabled": "yes"}}},
        {"marginPolicy": {"inferenceReserveFraction": 1.5}},
        {"marginPolicy": {"pricePerGPUHour": {"inference": "six"}}},
        {"ports": {"metrics": 70000}},
        {"operator": {"podSecurityLevel": "lenient"}},
        {"networkPolicy": {"apiServerCIDRs": ["the api server"]}},
        {"unknownKnob": True},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_every_value_is_documented_in_values_yaml() -> None:
    # Each knob has a comment right above it, or sits inside a documented block (a security context, say).
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = [
        line.strip()
        for index, line in enumerate(lines)
        if _is_key(line) and not line.rstrip().endswith(":")  # leaves only: a block is its knobs
        and not any(_has_comment_above(lines, i) for i in _self_and_ancestors(lines, index))
    ]
    assert undocumented == []


def _is_key(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("#", "-")) and ":" in stripped


def _has_comment_above(lines: list[str], index: int) -> bool:
    return index > 0 and lines[index - 1].strip().startswith("#")


def _self_and_ancestors(lines: list[str], index: int) -> list[int]:
    chain = [index]
    indent = len(lines[index]) - len(lines[index].lstrip())
    for previous in range(index - 1, -1, -1):
        line = lines[previous]
        line_indent = len(line) - len(line.lstrip())
        if _is_key(line) and line_indent < indent:
            chain.append(previous)
            indent = line_indent
    return chain


def test_make_chart_writes_every_template(tmp_path: Path) -> None:
    from tools.render_chart import main

    assert main([str(CHART_DIR), str(tmp_path)]) == 0
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml")}
    assert "gpuadmit/templates/deployment.yaml" in written
    assert "crds/gpuworkloads.gpuadmit.io.yaml" in written
    assert render_chart(CHART_DIR)  # the same renderer the tests use


def test_every_flag_the_chart_passes_is_one_gpuadmit_run_accepts(objects: list[dict]) -> None:
    import argparse

    from gpuadmit.controller.main import add_arguments, options_from_args

    parser = argparse.ArgumentParser(prog="gpuadmit run", exit_on_error=False)
    add_arguments(parser)
    (deployment,) = only(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    options = options_from_args(parser.parse_args(container["args"]))  # raises on an unknown flag
    assert options.metrics_port == container["ports"][0]["containerPort"]


@pytest.mark.parametrize(("name", "level"), [("defaults", "baseline"), ("everything-on", "restricted")])
def test_the_pod_security_level_reaches_the_operator(rendered_by_value_set: dict, name: str, level: str) -> None:
    import argparse

    from gpuadmit.controller.main import add_arguments, options_from_args

    parser = argparse.ArgumentParser(prog="gpuadmit run", exit_on_error=False)
    add_arguments(parser)
    (deployment,) = only(rendered_by_value_set[name], "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert options_from_args(parser.parse_args(container["args"])).pod_security_level == level


# What the chart and `gpuadmit run --manage-webhook-configurations` must say alike of each webhook
# (the chart reaches the server through its Service, the operator by URL, so clientConfig differs).
AGREED_FIELDS = ("admissionReviewVersions", "sideEffects", "failurePolicy", "matchPolicy", "timeoutSeconds",
                 "reinvocationPolicy", "rules", "namespaceSelector", "objectSelector", "matchConditions")


@pytest.mark.parametrize("values", [
    {"webhooks": {"enabled": True}},
    {"webhooks": {"enabled": True, "failurePolicy": "Ignore", "timeoutSeconds": 5}},
    {"webhooks": {"enabled": True, "nativeWorkloads": {"failurePolicy": "Ignore"}}},
    {"webhooks": {"enabled": True, "nativeWorkloads": {"enabled": False}}},
], ids=["defaults", "gpuworkloads-ignore", "native-ignore", "native-off"])
def test_the_charts_webhooks_agree_with_the_operators_list(values: dict[str, Any]) -> None:
    webhooks_values = values["webhooks"]
    native = webhooks_values.get("nativeWorkloads", {})
    rendered = rendered_objects(render_chart(CHART_DIR, values))
    charted = {webhook["name"]: (obj["kind"], webhook) for obj in rendered
               if obj["kind"].endswith("WebhookConfiguration") for webhook in obj["webhooks"]}
    expected = {webhook["name"]: (obj["kind"], webhook) for obj in webhook_configurations(
        "https://unused", None, failure_policy=webhooks_values.get("failurePolicy", "Fail"),
        native_failure_policy=native.get("failurePolicy", "Fail"), excluded_namespaces=[RELEASE_NAMESPACE],
        timeout_seconds=webhooks_values.get("timeoutSeconds", 10),
    ) for webhook in obj["webhooks"]}
    if native.get("enabled") is False:
        expected = {name: entry for name, entry in expected.items()
                    if not next(w for w in WEBHOOKS if w.name == name).native}
    assert sorted(charted) == sorted(expected)
    for webhook in WEBHOOKS:
        if webhook.name not in expected:
            continue
        (chart_kind, chart_entry), (kind, entry) = charted[webhook.name], expected[webhook.name]
        assert chart_kind == kind, webhook.name
        assert chart_entry["clientConfig"]["service"]["path"] == webhook.path
        for key in AGREED_FIELDS:
            assert chart_entry.get(key) == entry.get(key), (webhook.name, key)
