"""core.podsecurity: what a template may hold before gpuadmit turns it into pods with its own rights."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import InvalidWorkload, Workload
from gpuadmit.core.podsecurity import (
    BASELINE,
    ENFORCE_LABEL,
    LEVELS,
    PRIVILEGED,
    RESTRICTED,
    RUNTIME_CLASSES_ANNOTATION,
    SERVICE_ACCOUNTS_ANNOTATION,
    PodSecurity,
    TemplateRules,
    check_template,
    namespace_rules,
    pod_security_of_namespaces,
    template_violations,
)
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.snapshot import ParseMemo, build_snapshot
from gpuadmit.core.template_shape import check_template_shape
from gpuadmit.core.validation import validate_workload
from gpuadmit.core.workload import parse_workload

PLAIN = {"spec": {"containers": [{"name": "train", "image": "pytorch/pytorch", "command": ["torchrun", "train.py"]}]}}
# What the restricted level asks of every container, and nothing more.
HARDENED_CONTEXT = {
    "allowPrivilegeEscalation": False, "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]},
}


def template_with(pod: dict[str, Any] | None = None, container: dict[str, Any] | None = None,
                  metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    template = copy.deepcopy(PLAIN)
    template["spec"].update(pod or {})
    template["spec"]["containers"][0].update(container or {})
    if metadata is not None:
        template["metadata"] = metadata
    return template


def refusal(template: Any, rules: TemplateRules | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        check_template(template, rules or TemplateRules())
    return caught.value


def test_a_plain_template_passes_baseline_and_privileged() -> None:
    check_template(PLAIN, TemplateRules(level=BASELINE))
    check_template(PLAIN, TemplateRules(level=PRIVILEGED))
    assert list(template_violations(PLAIN)) == []


# -- refused at every level: what escapes the GPU accounting or gpuadmit's placement ----------

C0 = "spec.template.spec.containers[0]"
ALWAYS_REFUSED = [
    ({"resourceClaims": [{"name": "gpu", "resourceClaimName": "any-gpu"}]}, None, "spec.template.spec.resourceClaims"),
    (None, {"resources": {"claims": [{"name": "gpu"}]}}, f"{C0}.resources.claims"),
    (None, {"resources": {"limits": {"amd.com/gpu": 1}}}, f'{C0}.resources.limits["amd.com/gpu"]'),
    (None, {"resources": {"limits": {"gpu.intel.com/i915": 1}}}, f'{C0}.resources.limits["gpu.intel.com/i915"]'),
    (None, {"resources": {"requests": {"nvidia.com/mig-1g.10gb": "2"}}},
     f'{C0}.resources.requests["nvidia.com/mig-1g.10gb"]'),
    (None, {"resources": {"limits": {"nvidia.com/gpu.shared": 1}}}, f'{C0}.resources.limits["nvidia.com/gpu.shared"]'),
    (None, {"resources": {"limits": {"Habana.ai/gaudi": 1}}}, f'{C0}.resources.limits["Habana.ai/gaudi"]'),
    (None, {"resources": {"limits": {"NVIDIA.com/gpu": 1}}}, f'{C0}.resources.limits["NVIDIA.com/gpu"]'),
    (None, {"env": [{"name": "LR", "value": "1e-4"}, {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]},
     f"{C0}.env[1].name"),
    (None, {"env": [{"name": "CUDA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
     f"{C0}.env[0].name"),
    (None, {"env": [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}]}, f"{C0}.env[0].name"),
    (None, {"envFrom": [{"prefix": "NVIDIA_", "configMapRef": {"name": "devices"}}]}, f"{C0}.envFrom[0].prefix"),
    # Found by the hostile-tenant run: the tenant's ConfigMap may hold NVIDIA_VISIBLE_DEVICES=all.
    (None, {"envFrom": [{"prefix": "APP_", "configMapRef": {"name": "a"}}, {"configMapRef": {"name": "devices"}}]},
     f"{C0}.envFrom[1].prefix"),
    (None, {"envFrom": [{"prefix": "", "secretRef": {"name": "devices"}}]}, f"{C0}.envFrom[0].prefix"),
    # The NVIDIA runtime's volume-mounts device list: a mount named .../all exposes every GPU.
    ({"volumes": [{"name": "v", "emptyDir": {}}]},
     {"volumeMounts": [{"name": "v", "mountPath": "/var/run/nvidia-container-devices/all"}]},
     f"{C0}.volumeMounts[0].mountPath"),
    ({"volumes": [{"name": "v", "emptyDir": {}}]},
     {"volumeMounts": [{"name": "v", "mountPath": "//run/./nvidia-container-devices/x/../GPU-0"}]},
     f"{C0}.volumeMounts[0].mountPath"),
    ({"ephemeralContainers": [{"name": "e", "image": "b", "volumeMounts": [
        {"name": "v", "mountPath": "/var/run/nvidia-container-devices"}]}]},
     None, "spec.template.spec.ephemeralContainers[0].volumeMounts[0].mountPath"),
    ({"initContainers": [{"name": "warm", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
     None, 'spec.template.spec.initContainers[0].resources.limits["nvidia.com/gpu"]'),
    ({"initContainers": [{"name": "warm", "image": "busybox", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "0"}]}]},
     None, "spec.template.spec.initContainers[0].env[0].name"),
    ({"nodeName": "gpu-node-7"}, None, "spec.template.spec.nodeName"),
    ({"schedulerName": "kai-scheduler"}, None, "spec.template.spec.schedulerName"),
    ({"priorityClassName": "system-node-critical"}, None, "spec.template.spec.priorityClassName"),
    ({"serviceAccountName": "cluster-admin-sa"}, None, "spec.template.spec.serviceAccountName"),
    ({"serviceAccount": "builder"}, None, "spec.template.spec.serviceAccount"),
    ({"runtimeClassName": "nvidia-privileged"}, None, "spec.template.spec.runtimeClassName"),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("pod", "container", "field"), ALWAYS_REFUSED)
def test_what_escapes_the_accounting_is_refused_at_every_level(
    level: str, pod: dict[str, Any] | None, container: dict[str, Any] | None, field: str
) -> None:
    error = refusal(template_with(pod, container), TemplateRules(level=level))
    assert error.field == field
    assert str(error).startswith(f"{field}: ")


def test_what_the_accounting_sees_or_leaves_alone_passes() -> None:
    allowed = template_with(
        {"schedulerName": "default-scheduler", "priorityClassName": "high-priority", "serviceAccountName": "default",
         "initContainers": [{"name": "warm", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "0", "cpu": 1}}}]},
        {"resources": {"limits": {"nvidia.com/gpu": 4, "memory": "64Gi", "rdma/hca": 1}},
         "env": [{"name": "NVIDIA_TF32_OVERRIDE", "value": "0"}, {"name": "NCCL_DEBUG", "value": "INFO"}],
         "envFrom": [{"prefix": "SETTINGS_", "configMapRef": {"name": "settings"}}, {"prefix": "APP_", "secretRef": {"name": "s"}}],
         "volumeMounts": [{"name": "run", "mountPath": "/var/run/app"}, {"name": "nv", "mountPath": "/var/run/nvidia"}]},
    )
    check_template(allowed, TemplateRules(level=BASELINE))


# -- the Pod Security Standards levels ---------------------------------------------------------

BASELINE_REFUSED = [
    ({"hostNetwork": True}, None, None, "spec.template.spec.hostNetwork"),
    ({"hostPID": True}, None, None, "spec.template.spec.hostPID"),
    ({"hostIPC": True}, None, None, "spec.template.spec.hostIPC"),
    ({"volumes": [{"name": "data", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}]}, None, None,
     "spec.template.spec.volumes[1].hostPath"),
    (None, {"securityContext": {"privileged": True}}, None, f"{C0}.securityContext.privileged"),
    (None, {"securityContext": {"capabilities": {"add": ["CHOWN", "SYS_ADMIN"]}}}, None,
     f"{C0}.securityContext.capabilities.add[1]"),
    (None, {"ports": [{"containerPort": 80, "hostPort": 80}]}, None, f"{C0}.ports[0].hostPort"),
    (None, {"securityContext": {"procMount": "Unmasked"}}, None, f"{C0}.securityContext.procMount"),
    (None, {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, None,
     f"{C0}.securityContext.seccompProfile.type"),
    ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, None, None,
     "spec.template.spec.securityContext.seccompProfile.type"),
    ({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}, None, None,
     "spec.template.spec.securityContext.seLinuxOptions.type"),
    (None, {"securityContext": {"seLinuxOptions": {"user": "system_u"}}}, None,
     f"{C0}.securityContext.seLinuxOptions.user"),
    ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, None, None,
     "spec.template.spec.securityContext.sysctls[0].name"),
    (None, {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, None,
     f"{C0}.securityContext.appArmorProfile.type"),
    (None, None, {"annotations": {"container.apparmor.security.beta.kubernetes.io/train": "unconfined"}},
     'spec.template.metadata.annotations["container.apparmor.security.beta.kubernetes.io/train"]'),
    (None, {"securityContext": {"windowsOptions": {"hostProcess": True}}}, None,
     f"{C0}.securityContext.windowsOptions.hostProcess"),
    ({"ephemeralContainers": [{"name": "debug", "image": "busybox", "securityContext": {"privileged": True}}]}, None, None,
     "spec.template.spec.ephemeralContainers[0].securityContext.privileged"),
]


@pytest.mark.parametrize(("pod", "container", "metadata", "field"), BASELINE_REFUSED)
def test_baseline_refuses_the_known_escalations_and_privileged_allows_them(
    pod: dict[str, Any] | None, container: dict[str, Any] | None, metadata: dict[str, Any] | None, field: str
) -> None:
    template = template_with(pod, container, metadata)
    for level in (BASELINE, RESTRICTED):
        error = refusal(template, TemplateRules(level=level))
        assert error.field == field
        assert f"Pod Security Standard {BASELINE!r}" in error.message
    check_template(template, TemplateRules(level=PRIVILEGED))


def test_baseline_allows_its_safe_values() -> None:
    check_template(template_with(
        {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}],
                             "seLinuxOptions": {"type": "container_t"}, "seccompProfile": {"type": "RuntimeDefault"}},
         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}, {"name": "nfs", "nfs": {"server": "s", "path": "/"}}]},
        {"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}, "runAsUser": 0, "procMount": "Default"},
         "ports": [{"containerPort": 8000, "hostPort": 0}]},
        {"annotations": {"container.apparmor.security.beta.kubernetes.io/train": "runtime/default"}},
    ), TemplateRules(level=BASELINE))


def test_restricted_asks_for_a_hardened_container() -> None:
    hardened = template_with(container={"securityContext": HARDENED_CONTEXT})
    check_template(hardened, TemplateRules(level=RESTRICTED))
    error = refusal(PLAIN, TemplateRules(level=RESTRICTED))
    assert error.field == f"{C0}.securityContext.allowPrivilegeEscalation"
    assert "'restricted'" in error.message
    check_template(PLAIN, TemplateRules(level=BASELINE))  # the same template is fine one level down


@pytest.mark.parametrize(("change", "field"), [
    ({"runAsUser": 0}, f"{C0}.securityContext.runAsUser"),
    ({"runAsNonRoot": False}, f"{C0}.securityContext.runAsNonRoot"),
    ({"allowPrivilegeEscalation": True}, f"{C0}.securityContext.allowPrivilegeEscalation"),
    ({"capabilities": {"drop": ["NET_RAW"]}}, f"{C0}.securityContext.capabilities.drop"),
    ({"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}, f"{C0}.securityContext.capabilities.add[0]"),
    ({"seccompProfile": None}, f"{C0}.securityContext.seccompProfile.type"),
])
def test_restricted_refuses_each_of_its_controls(change: dict[str, Any], field: str) -> None:
    context = {**HARDENED_CONTEXT, **change}
    error = refusal(template_with(container={"securityContext": context}), TemplateRules(level=RESTRICTED))
    assert error.field == field
    check_template(template_with(container={"securityContext": context}), TemplateRules(level=BASELINE))


def test_restricted_takes_pod_level_non_root_and_seccomp_and_limits_volume_types() -> None:
    pod_context = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container_context = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    template = template_with({"securityContext": pod_context}, {"securityContext": container_context})
    check_template(template, TemplateRules(level=RESTRICTED))
    template["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}, {"name": "share", "nfs": {"server": "s", "path": "/"}}]
    assert refusal(template, TemplateRules(level=RESTRICTED)).field == "spec.template.spec.volumes[1].nfs"


def test_malformed_shapes_are_left_to_the_shape_checks() -> None:
    for template in (None, [], "x", {"spec": []}, {"spec": {"containers": "x", "volumes": {"a": 1}, "securityContext": []}},
                     {"spec": {"containers": [1, {"env": "x", "resources": [], "securityContext": "x", "ports": {}}]}}):
        for level in (PRIVILEGED, BASELINE):
            check_template(template, TemplateRules(level=level))
        # restricted asks for fields to be set: a malformed security context counts as unset
        assert all(isinstance(field, str) for field, _ in template_violations(template, TemplateRules(level=RESTRICTED)))


# -- namespaces: a stricter enforce label wins, an administrator's allowances -----------------


def a_namespace(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


@pytest.mark.parametrize(("configured", "label", "in_force"), [
    (BASELINE, RESTRICTED, RESTRICTED),   # stricter label: honoured
    (BASELINE, PRIVILEGED, BASELINE),     # looser label: the configured level stands
    (PRIVILEGED, BASELINE, BASELINE),
    (RESTRICTED, BASELINE, RESTRICTED),
    (PRIVILEGED, "bogus", RESTRICTED),    # as Pod Security Admission reads an invalid level
])
def test_the_namespace_label_counts_only_when_stricter(configured: str, label: str, in_force: str) -> None:
    assert namespace_rules(a_namespace("team", {ENFORCE_LABEL: label}), configured).level == in_force
    assert namespace_rules(a_namespace("team"), configured).level == configured
    assert namespace_rules(None, configured).level == configured


def test_service_accounts_and_runtime_classes_need_the_namespace_allowance() -> None:
    template = template_with({"serviceAccountName": "trainer", "runtimeClassName": "kata"})
    security = pod_security_of_namespaces([
        a_namespace("allowed", annotations={SERVICE_ACCOUNTS_ANNOTATION: "reader, trainer", RUNTIME_CLASSES_ANNOTATION: "kata"}),
        a_namespace("anything", annotations={SERVICE_ACCOUNTS_ANNOTATION: "*", RUNTIME_CLASSES_ANNOTATION: "*"}),
        a_namespace("other", annotations={SERVICE_ACCOUNTS_ANNOTATION: "reader"}),
    ])
    check_template(template, security.rules_for("allowed"))
    check_template(template, security.rules_for("anything"))
    assert refusal(template, security.rules_for("other")).field == "spec.template.spec.serviceAccountName"
    assert refusal(template, security.rules_for("unknown")).field == "spec.template.spec.serviceAccountName"
    assert SERVICE_ACCOUNTS_ANNOTATION in refusal(template, security.rules_for("other")).message


# -- the same refusal from the engine's parser and from the webhook's validation --------------


def a_workload(template: dict[str, Any], namespace: str = "team", status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
                           "metadata": {"name": "w", "namespace": namespace, "creationTimestamp": "2026-11-26T09:00:00Z",
                                        "uid": "u1", "resourceVersion": "1"},
                           "spec": {"gpus": 1, "class": "training", "template": template}}
    if status is not None:
        obj["status"] = status
    return obj


def test_parser_and_webhook_refuse_with_the_same_message() -> None:
    obj = a_workload(template_with({"hostNetwork": True}))
    parsed = parse_workload(obj, DEFAULT_POLICY, {})
    assert isinstance(parsed, InvalidWorkload) and parsed.field == "spec.template.spec.hostNetwork"
    result = validate_workload(obj)
    assert (result.allowed, result.reason, result.field) == (False, "InvalidSpec", parsed.field)
    assert result.message == parsed.message


def test_the_configured_level_and_namespace_reach_the_parser() -> None:
    obj = a_workload(PLAIN)
    strict = PodSecurity(level=RESTRICTED)
    assert isinstance(parse_workload(obj, DEFAULT_POLICY, {}), Workload)
    assert isinstance(parse_workload(obj, DEFAULT_POLICY, {}, pod_security=strict), InvalidWorkload)
    assert not validate_workload(obj, pod_security=strict).allowed
    labelled = pod_security_of_namespaces([a_namespace("team", {ENFORCE_LABEL: RESTRICTED})], BASELINE)
    assert isinstance(parse_workload(obj, DEFAULT_POLICY, {}, pod_security=labelled), InvalidWorkload)


def test_a_workload_holding_gpus_is_not_judged_again_by_the_parser_but_its_new_template_is_by_the_webhook() -> None:
    held = a_workload(template_with({"hostNetwork": True}), status={"phase": "Running", "placement": [{"node": "n", "gpus": 1}]})
    assert isinstance(parse_workload(held, DEFAULT_POLICY, {}), Workload)  # its GPUs stay accounted
    old = a_workload(PLAIN, status={"phase": "Running", "placement": [{"node": "n", "gpus": 1}]})
    result = validate_workload(held, old)
    assert (result.allowed, result.field) == (False, "spec.template.spec.hostNetwork")


def test_the_snapshot_applies_the_namespace_label_and_reparses_when_it_changes() -> None:
    obj = a_workload(PLAIN)
    memo = ParseMemo()
    loose = build_snapshot([], [], [a_namespace("team")], [obj], [], now=0.0, memo=memo)
    assert [w.name for w in loose.pending] == ["w"] and loose.invalid == ()
    strict = build_snapshot([], [], [a_namespace("team", {ENFORCE_LABEL: RESTRICTED})], [obj], [], now=0.0, memo=memo)
    assert strict.pending == () and [i.field for i in strict.invalid] == [f"{C0}.securityContext.allowPrivilegeEscalation"]
    configured = build_snapshot([], [], [a_namespace("team")], [obj], [], now=0.0, memo=memo, pod_security_level=RESTRICTED)
    assert configured.pending == () and len(configured.invalid) == 1


# -- any mix of these fields: never a crash, and the webhook and the parser always agree -------

anything = st.one_of(st.none(), st.booleans(), st.integers(-1, 2), st.text(max_size=4),
                     st.sampled_from(["ALL", "SYS_ADMIN", "Unconfined", "RuntimeDefault", "system-x", "default"]))
security_contexts = st.dictionaries(
    st.sampled_from(["privileged", "runAsUser", "runAsNonRoot", "allowPrivilegeEscalation", "procMount",
                     "capabilities", "seccompProfile", "seLinuxOptions", "windowsOptions", "sysctls"]),
    st.one_of(anything, st.fixed_dictionaries({}, optional={"add": st.lists(anything, max_size=2),
                                                            "drop": st.lists(anything, max_size=2),
                                                            "type": anything, "hostProcess": anything})),
    max_size=4)
containers = st.fixed_dictionaries({"name": st.just("c"), "image": st.just("busybox")}, optional={
    "securityContext": st.one_of(security_contexts, anything),
    "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"])},
                                          optional={"value": anything}), max_size=2),
    "resources": st.fixed_dictionaries({}, optional={"limits": st.dictionaries(
        st.sampled_from(["cpu", "nvidia.com/gpu", "amd.com/gpu", "nvidia.com/mig-1g.5gb"]), st.sampled_from(["0", "1"]),
        max_size=2), "claims": st.lists(st.just({"name": "x"}), max_size=1)}),
    "ports": st.lists(st.fixed_dictionaries({"containerPort": st.just(80)}, optional={"hostPort": anything}), max_size=1),
})
pod_specs = st.fixed_dictionaries({"containers": st.lists(containers, min_size=1, max_size=2)}, optional={
    "initContainers": st.lists(containers, max_size=1),
    "hostNetwork": anything, "hostPID": anything, "nodeName": anything, "schedulerName": anything,
    "priorityClassName": anything, "serviceAccountName": anything, "runtimeClassName": anything,
    "securityContext": st.one_of(security_contexts, anything),
    "volumes": st.lists(st.sampled_from([{"name": "a", "emptyDir": {}}, {"name": "b", "hostPath": {"path": "/"}},
                                         {"name": "c", "nfs": {"server": "s", "path": "/"}}]), max_size=2),
})


@settings(max_examples=300, deadline=None)
@given(pod=pod_specs, level=st.sampled_from(LEVELS), label=st.sampled_from([None, *LEVELS, "bogus"]))
def test_parser_and_webhook_agree_on_any_mix_of_fields(pod: dict[str, Any], level: str, label: str | None) -> None:
    namespace = a_namespace("team", {ENFORCE_LABEL: label} if label else {})
    security = pod_security_of_namespaces([namespace], level)
    obj = a_workload({"spec": pod})
    parsed = parse_workload(obj, DEFAULT_POLICY, {}, pod_security=security)
    result = validate_workload(obj, pod_security=security)
    violations = list(template_violations({"spec": pod}, security.rules_for("team")))
    try:  # a template of the wrong shape is refused for its shape first, by both
        check_template_shape({"spec": pod})
    except SpecError as error:
        violations = [(error.field, str(error))]
    if violations:  # the first violation is the refusal, from both, in the same words
        assert isinstance(parsed, InvalidWorkload) and parsed.field == violations[0][0]
        assert (result.allowed, result.field, result.message) == (False, parsed.field, parsed.message)
    else:  # nothing else here is invalid for the parser; the webhook may still count GPUs in the template
        assert isinstance(parsed, Workload)
        assert result.allowed or '["nvidia.com/gpu"]' in (result.field or "")


@pytest.mark.parametrize("level", LEVELS)
def test_a_device_annotation_is_refused_at_every_level(level: str) -> None:
    """Found by the hostile-tenant run: the runtime injects the devices such an annotation names."""
    template = template_with(metadata={"annotations": {"note": "ok", "cdi.k8s.io/grab": "nvidia.com/gpu=all"}})
    error = refusal(template, TemplateRules(level=level))
    assert error.field == 'spec.template.metadata.annotations["cdi.k8s.io/grab"]'
    crio = template_with(metadata={"annotations": {"io.kubernetes.cri-o.Devices": "/dev/nvidia0"}})
    assert refusal(crio, TemplateRules(level=level)).field == 'spec.template.metadata.annotations["io.kubernetes.cri-o.Devices"]'
    elsewhere = template_with(metadata={"annotations": {"example.com/cdi.k8s.io": "x"}})
    assert not [field for field, _ in template_violations(elsewhere, TemplateRules(level=level)) if "metadata" in field]
