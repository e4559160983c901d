"""What a GPUWorkload's pod template may hold, checked before gpuadmit turns it into pods.

gpuadmit creates its workloads' pods with its own service account, which may create pods in
every namespace. Without this check a tenant allowed to create GPUWorkloads could get pods
they could not create themselves (privileged, on the host's namespaces, under another
service account) and GPUs the engine never reserved. So a template is refused, naming the
field, when it holds:

1. **Anything that escapes the GPU accounting**, at every level: Dynamic Resource Allocation
   claims (``resourceClaims``, ``resources.claims``), other accelerators' extended resources
   (any ``nvidia.com/`` resource but ``nvidia.com/gpu`` -- MIG slices, renamed shared GPUs --,
   ``amd.com/``, ``gpu.intel.com/``, Habana, Neuron, TPU, Xilinx, Qualcomm), GPUs on init or
   ephemeral containers, and the environment variables through which the NVIDIA and AMD
   container runtimes expose devices no matter what the pod requested
   (``NVIDIA_VISIBLE_DEVICES`` and friends, by ``value`` or ``valueFrom``, or by ``envFrom``
   without a prefix or with one that can spell them: the ConfigMap or Secret it reads is the
   tenant's and may change at any time), a volume mounted where the NVIDIA runtime's
   ``volume-mounts`` device list is read (``/var/run/nvidia-container-devices``), and
   device annotations (Container Device Interface ``cdi.k8s.io/``, CRI-O's
   ``io.kubernetes.cri-o.Devices``), through which a runtime injects the devices they name.
2. **What would take the pod out of gpuadmit's hands**: ``nodeName`` (gpuadmit pins each pod
   to the node it reserved), a ``schedulerName`` other than the default scheduler, a
   ``system-`` priority class (kube-system's, which preempts everything).
3. **What the tenant could not get by creating the pod themselves**: the Pod Security
   Standards level in force (``privileged``, ``baseline`` or ``restricted``, as upstream
   defines them; ``baseline`` by default; a namespace's ``pod-security.kubernetes.io/enforce``
   label wins when it is stricter, as Pod Security Admission would apply it to the pods
   anyway), and a service account or runtime class other than the default unless the
   namespace lists it in the annotation ``gpuadmit.io/allowed-service-accounts`` or
   ``gpuadmit.io/allowed-runtime-classes`` (comma-separated names, ``*`` for any). Namespace
   objects are cluster-scoped and edited by cluster administrators, not by tenants: a service
   account is usable through gpuadmit only where an administrator said so.

``check_template`` raises ``SpecError`` on the first violation, so the webhook and the
engine's parser (which both call it) refuse the same templates with the same message
(reason ``InvalidSpec``). Nothing else in this module raises, whatever the template holds.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import GPU_RESOURCE
from gpuadmit.core.nodes import parse_quantity

_MAPPINGS = (dict, Mapping)

PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)  # from the loosest to the strictest
DEFAULT_LEVEL = BASELINE

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
SERVICE_ACCOUNTS_ANNOTATION = "gpuadmit.io/allowed-service-accounts"
RUNTIME_CLASSES_ANNOTATION = "gpuadmit.io/allowed-runtime-classes"
ANY_NAME = "*"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_SCHEDULER = "default-scheduler"
SYSTEM_PRIORITY_PREFIX = "system-"  # Kubernetes reserves it for system-cluster-critical / system-node-critical

# Extended resources of accelerators the engine does not count. A name matches when it starts
# with one of these (lower-cased); nvidia.com/gpu itself is the one the engine accounts.
FOREIGN_ACCELERATOR_PREFIXES = (
    "nvidia.com/",  # MIG slices (nvidia.com/mig-1g.10gb), renamed time-sliced GPUs (nvidia.com/gpu.shared)
    "amd.com/",
    "gpu.intel.com/",
    "habana.ai/",
    "aws.amazon.com/neuron",
    "google.com/tpu",
    "xilinx.com/",
    "qualcomm.com/",
)
# Read by the NVIDIA / AMD container runtimes: on a node whose runtime honours them they expose
# devices the pod never requested (NVIDIA_VISIBLE_DEVICES=all: every GPU of the node).
DEVICE_ENV_VARS = frozenset({
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "NVIDIA_IMEX_CHANNELS",
    "CUDA_VISIBLE_DEVICES",
    "AMD_VISIBLE_DEVICES",
})

# The NVIDIA container toolkit's volume-mounts device list: a mount whose destination lies below
# this directory names the GPUs to expose (".../all": every GPU), whatever the volume holds.
DEVICE_MOUNT_ROOTS = ("/var/run/nvidia-container-devices", "/run/nvidia-container-devices")
# Pod annotations a runtime reads as devices to inject: Container Device Interface ones (containerd,
# CRI-O with CDI enabled) and CRI-O's own device annotation (honoured where a runtime handler allows it).
DEVICE_ANNOTATION_PREFIXES = ("cdi.k8s.io/", "io.kubernetes.cri-o.devices")

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

# -- Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/) --
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_RESTRICTED_TYPES = frozenset({"RuntimeDefault", "Localhost"})
RESTRICTED_VOLUME_SOURCES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
VOLUME_NON_SOURCE_KEYS = frozenset({"name"})

TEMPLATE = "spec.template"


@dataclass(frozen=True, slots=True)
class TemplateRules:
    """What the templates of one namespace may hold beyond the fixed refusals."""

    level: str = DEFAULT_LEVEL
    service_accounts: frozenset[str] = frozenset()  # besides "default"; "*" for any
    runtime_classes: frozenset[str] = frozenset()  # "*" for any
    # Only the GPU accounting refusals: for the mirror of a native object (core.native), whose pods
    # its own controller creates under the tenant's rights and the API server's admission, not gpuadmit.
    accounting_only: bool = False


@dataclass(frozen=True, slots=True)
class PodSecurity:
    """The cluster's rules: the configured level, and what namespaces add or tighten."""

    level: str = DEFAULT_LEVEL
    by_namespace: Mapping[str, TemplateRules] = field(default_factory=dict)

    def rules_for(self, namespace: str) -> TemplateRules:
        rules = self.by_namespace.get(namespace)
        return rules if rules is not None else TemplateRules(level=self.level)


ACCOUNTING_ONLY_RULES = TemplateRules(level=PRIVILEGED, accounting_only=True)


@dataclass(frozen=True, slots=True)
class AccountingOnly(PodSecurity):
    """The rules a native object's mirror is held to in every namespace: the accounting ones."""

    def rules_for(self, namespace: str) -> TemplateRules:
        return ACCOUNTING_ONLY_RULES


MIRROR_POD_SECURITY = AccountingOnly(level=PRIVILEGED)


DEFAULT_POD_SECURITY = PodSecurity()
DEFAULT_RULES = TemplateRules()


def stricter(first: str, second: str) -> str:
    return first if LEVELS.index(first) >= LEVELS.index(second) else second


def parse_level(value: object) -> str:
    """A level name as Pod Security Admission reads a label: unknown values mean ``restricted``."""
    return value if isinstance(value, str) and value in LEVELS else RESTRICTED


def namespace_rules(namespace: Mapping[str, Any] | None, level: str = DEFAULT_LEVEL) -> TemplateRules:
    """The rules of one Namespace object (None: the configured level alone)."""
    metadata = namespace.get("metadata") if isinstance(namespace, _MAPPINGS) else None
    if not isinstance(metadata, _MAPPINGS):
        return TemplateRules(level=level)
    labels = metadata.get("labels")
    enforce = labels.get(ENFORCE_LABEL) if isinstance(labels, _MAPPINGS) else None
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, _MAPPINGS) else {}
    return TemplateRules(
        level=stricter(parse_level(enforce), level) if enforce is not None else level,
        service_accounts=_names(annotations.get(SERVICE_ACCOUNTS_ANNOTATION)),
        runtime_classes=_names(annotations.get(RUNTIME_CLASSES_ANNOTATION)),
    )


def pod_security_of_namespaces(namespaces: Iterable[Mapping[str, Any]], level: str = DEFAULT_LEVEL) -> PodSecurity:
    """The cluster's rules from its Namespace objects and the configured level."""
    plain = TemplateRules(level=level)
    by_namespace: dict[str, TemplateRules] = {}
    for namespace in namespaces:
        metadata = namespace.get("metadata") if isinstance(namespace, _MAPPINGS) else None
        name = metadata.get("name") if isinstance(metadata, _MAPPINGS) else None
        if isinstance(name, str):
            rules = namespace_rules(namespace, level)
            if rules != plain:
                by_namespace[name] = rules
    return PodSecurity(level=level, by_namespace=by_namespace)


def _names(value: object) -> frozenset[str]:
    if not isinstance(value, str):
        return frozenset()
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def check_template(template: object, rules: TemplateRules = DEFAULT_RULES) -> None:
    """Raise ``SpecError`` naming the first field of ``template`` that ``rules`` refuse.

    A template of the wrong shape is left to the shape checks (nothing is refused for it here).
    """
    for field_path, message in template_violations(template, rules):
        raise SpecError(field_path, message)


def template_violations(template: object, rules: TemplateRules = DEFAULT_RULES) -> Iterator[tuple[str, str]]:
    """Every (field, message) of ``template`` that ``rules`` refuse, fixed refusals first."""
    if not isinstance(template, _MAPPINGS):
        return
    pod = template.get("spec")
    if not isinstance(pod, _MAPPINGS):
        return
    metadata = template.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, _MAPPINGS) else None
    containers = list(_containers(pod))
    yield from _outside_accounting(pod, containers, annotations if isinstance(annotations, _MAPPINGS) else {})
    if rules.accounting_only:
        return
    yield from _outside_gpuadmit(pod, rules)
    if rules.level != PRIVILEGED:
        yield from _baseline(pod, containers, annotations if isinstance(annotations, _MAPPINGS) else {})
    if rules.level == RESTRICTED:
        yield from _restricted(pod, containers)


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(list name, field path, container) for every container object of the pod spec."""
    for list_name in CONTAINER_LISTS:
        items = pod.get(list_name)
        if isinstance(items, list):
            for index, container in enumerate(items):
                if isinstance(container, _MAPPINGS):
                    yield list_name, f"{TEMPLATE}.spec.{list_name}[{index}]", container


def _get(obj: object, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, _MAPPINGS):
            return None
        obj = obj.get(key)
    return obj


# -- 1. accelerators the engine does not count -----------------------------------------------


def _outside_accounting(
    pod: Mapping[str, Any], containers: list[tuple[str, str, Mapping[str, Any]]], annotations: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    for key in annotations:
        if isinstance(key, str) and key.lower().startswith(DEVICE_ANNOTATION_PREFIXES):
            yield (f'{TEMPLATE}.metadata.annotations["{key}"]', ("device annotations are not allowed: the container "
                   "runtime injects the devices they name (Container Device Interface, CRI-O), which gpuadmit never reserved"))
    if pod.get("resourceClaims"):
        yield (f"{TEMPLATE}.spec.resourceClaims", ("Dynamic Resource Allocation claims are not allowed: "
               "gpuadmit accounts GPUs by spec.gpus only, and a claim could take devices it never reserved"))
    for list_name, path, container in containers:
        yield from _device_env(path, container)
        yield from _device_mounts(path, container)
        resources = container.get("resources")
        if not isinstance(resources, _MAPPINGS):
            continue
        if resources.get("claims"):
            yield (f"{path}.resources.claims", ("Dynamic Resource Allocation claims are not allowed: "
                   "gpuadmit accounts GPUs by spec.gpus only"))
        for section in ("limits", "requests"):
            amounts = resources.get(section)
            if not isinstance(amounts, _MAPPINGS):
                continue
            for name, amount in amounts.items():
                if name == GPU_RESOURCE:
                    if list_name != "containers" and parse_quantity(amount) != 0:
                        yield (f'{path}.resources.{section}["{name}"]', (f"GPUs on {list_name} are not allowed: "
                               "gpuadmit gives the admitted GPUs to one of spec.template.spec.containers only"))
                # Any other spelling counts as foreign, "NVIDIA.com/gpu" too: nothing accounts it.
                elif isinstance(name, str) and name.lower().startswith(FOREIGN_ACCELERATOR_PREFIXES):
                    yield (f'{path}.resources.{section}["{name}"]', (f"the accelerator resource {name!r} is not "
                           f"accounted by gpuadmit, which rations {GPU_RESOURCE} only; ask for GPUs with spec.gpus"))


def _device_env(path: str, container: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    env = container.get("env")
    if isinstance(env, list):
        for index, item in enumerate(env):
            name = item.get("name") if isinstance(item, _MAPPINGS) else None
            if isinstance(name, str) and name in DEVICE_ENV_VARS:
                yield (f"{path}.env[{index}].name", (f"{name} is set by the GPU device plugin from the GPUs "
                       "gpuadmit reserved; a template may not set it (it can expose GPUs nobody reserved)"))
    env_from = container.get("envFrom")
    if isinstance(env_from, list):
        for index, item in enumerate(env_from):
            if not isinstance(item, _MAPPINGS):
                continue  # the shape checks refuse it
            prefix = item.get("prefix")
            if not isinstance(prefix, str) or not prefix:
                # The ConfigMap or Secret is the tenant's, read by the kubelet when the pod starts:
                # whatever it holds now, it may hold NVIDIA_VISIBLE_DEVICES=all by then.
                yield (f"{path}.envFrom[{index}].prefix", ("must be set: without a prefix the ConfigMap or Secret "
                       "can set a device variable (NVIDIA_VISIBLE_DEVICES=all exposes every GPU of the node); "
                       "give a prefix such as 'APP_'"))
            elif any(var.startswith(prefix) for var in DEVICE_ENV_VARS):
                yield (f"{path}.envFrom[{index}].prefix", (f"the prefix {prefix!r} can spell a device variable "
                       f"({', '.join(sorted(v for v in DEVICE_ENV_VARS if v.startswith(prefix)))}); choose another"))


def _device_mounts(path: str, container: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    mounts = container.get("volumeMounts")
    if not isinstance(mounts, list):
        return
    for index, mount in enumerate(mounts):
        mount_path = mount.get("mountPath") if isinstance(mount, _MAPPINGS) else None
        if not isinstance(mount_path, str):
            continue
        normalized = posixpath.normpath("/" + mount_path.strip().lstrip("/"))  # kubelet joins it to the root
        if any(normalized == root or normalized.startswith(root + "/") for root in DEVICE_MOUNT_ROOTS):
            yield (f"{path}.volumeMounts[{index}].mountPath", (f"{_show(mount_path)} is where the NVIDIA runtime "
                   "reads the GPUs to expose (its volume-mounts device list); a template may not mount there"))


# -- 2. what would take the pod out of gpuadmit's hands --------------------------------------


def _outside_gpuadmit(pod: Mapping[str, Any], rules: TemplateRules) -> Iterator[tuple[str, str]]:
    if pod.get("nodeName"):
        yield (f"{TEMPLATE}.spec.nodeName", ("is set by gpuadmit to the node whose GPUs it reserved; remove it "
               "(spec.gpuProducts and tolerations say where a workload may go)"))
    scheduler = pod.get("schedulerName")
    if scheduler not in (None, "", DEFAULT_SCHEDULER):
        yield (f"{TEMPLATE}.spec.schedulerName", (f"must be {DEFAULT_SCHEDULER!r} or unset, got {_show(scheduler)}: "
               "gpuadmit places the pods itself"))
    priority_class = pod.get("priorityClassName")
    if isinstance(priority_class, str) and priority_class.startswith(SYSTEM_PRIORITY_PREFIX):
        yield (f"{TEMPLATE}.spec.priorityClassName", (f"{priority_class!r} is reserved for the cluster's own "
               "components; gpuadmit's preemption decides which GPU workload gives way"))
    for key in ("serviceAccountName", "serviceAccount"):
        account = pod.get(key)
        if account in (None, "", DEFAULT_SERVICE_ACCOUNT) or _listed(account, rules.service_accounts):
            continue
        yield (f"{TEMPLATE}.spec.{key}", (f"the service account {_show(account)} is not allowed in this namespace: "
               f"gpuadmit creates the pods with its own rights, so a service account other than "
               f"{DEFAULT_SERVICE_ACCOUNT!r} must be listed by an administrator in the namespace's "
               f"{SERVICE_ACCOUNTS_ANNOTATION} annotation"))
    runtime_class = pod.get("runtimeClassName")
    if runtime_class not in (None, "") and not _listed(runtime_class, rules.runtime_classes):
        yield (f"{TEMPLATE}.spec.runtimeClassName", (f"the runtime class {_show(runtime_class)} is not allowed in "
               f"this namespace: an administrator lists usable ones in its {RUNTIME_CLASSES_ANNOTATION} annotation"))


def _listed(name: object, allowed: frozenset[str]) -> bool:
    return ANY_NAME in allowed or (isinstance(name, str) and name in allowed)


# -- 3. Pod Security Standards ---------------------------------------------------------------


def _baseline(
    pod: Mapping[str, Any], containers: list[tuple[str, str, Mapping[str, Any]]], annotations: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    def refused(path: str, value: object, control: str) -> tuple[str, str]:
        return path, f"{_show(value)} is not allowed by the Pod Security Standard {BASELINE!r} ({control})"

    spec_path = f"{TEMPLATE}.spec"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            yield refused(f"{spec_path}.{key}", pod.get(key), "host namespaces")
    volumes = pod.get("volumes")
    if isinstance(volumes, list):
        for index, volume in enumerate(volumes):
            if isinstance(volume, _MAPPINGS) and volume.get("hostPath") is not None:
                yield refused(f"{spec_path}.volumes[{index}].hostPath", volume.get("hostPath"), "hostPath volumes")
    pod_context = pod.get("securityContext")
    if pod_context and isinstance(pod_context, _MAPPINGS):  # most templates have none: skip the walk
        if _get(pod_context, "windowsOptions", "hostProcess"):
            yield refused(f"{spec_path}.securityContext.windowsOptions.hostProcess", True, "HostProcess")
        yield from _selinux_and_seccomp(f"{spec_path}.securityContext", pod_context, refused)
        sysctls = pod_context.get("sysctls")
        if isinstance(sysctls, list):
            for index, sysctl in enumerate(sysctls):
                name = sysctl.get("name") if isinstance(sysctl, _MAPPINGS) else None
                if name not in SAFE_SYSCTLS:
                    yield refused(f"{spec_path}.securityContext.sysctls[{index}].name", name, "sysctls")
    for key, value in annotations.items():
        allowed = value == "runtime/default" or (isinstance(value, str) and value.startswith("localhost/"))
        if isinstance(key, str) and key.startswith(APPARMOR_ANNOTATION_PREFIX) and not allowed:
            yield refused(f'{TEMPLATE}.metadata.annotations["{key}"]', value, "AppArmor")

    for _list_name, path, container in containers:
        context = container.get("securityContext")
        if context and isinstance(context, _MAPPINGS):
            here = f"{path}.securityContext"
            if context.get("privileged"):
                yield refused(f"{here}.privileged", context.get("privileged"), "privileged containers")
            if _get(context, "windowsOptions", "hostProcess"):
                yield refused(f"{here}.windowsOptions.hostProcess", True, "HostProcess")
            added = _get(context, "capabilities", "add")
            if isinstance(added, list):
                for index, capability in enumerate(added):
                    if capability not in BASELINE_CAPABILITIES:
                        yield refused(f"{here}.capabilities.add[{index}]", capability, "capabilities")
            proc_mount = context.get("procMount")
            if proc_mount not in (None, "Default"):
                yield refused(f"{here}.procMount", proc_mount, "/proc mount type")
            yield from _selinux_and_seccomp(here, context, refused)
        ports = container.get("ports")
        if isinstance(ports, list):
            for index, port in enumerate(ports):
                host_port = port.get("hostPort") if isinstance(port, _MAPPINGS) else None
                if host_port not in (None, 0):
                    yield refused(f"{path}.ports[{index}].hostPort", host_port, "host ports")


def _selinux_and_seccomp(
    here: str, context: Mapping[str, Any], refused: Callable[[str, object, str], tuple[str, str]]
) -> Iterator[tuple[str, str]]:
    se_linux = context.get("seLinuxOptions")
    if isinstance(se_linux, _MAPPINGS):
        if se_linux.get("type") not in (None, *SELINUX_TYPES):
            yield refused(f"{here}.seLinuxOptions.type", se_linux.get("type"), "SELinux")
        for key in ("user", "role"):
            if se_linux.get(key) not in (None, ""):
                yield refused(f"{here}.seLinuxOptions.{key}", se_linux.get(key), "SELinux")
    seccomp_type = _get(context, "seccompProfile", "type")
    if seccomp_type == "Unconfined":
        yield refused(f"{here}.seccompProfile.type", seccomp_type, "seccomp")
    apparmor_type = _get(context, "appArmorProfile", "type")
    if apparmor_type is not None and apparmor_type not in APPARMOR_TYPES:
        yield refused(f"{here}.appArmorProfile.type", apparmor_type, "AppArmor")


def _restricted(pod: Mapping[str, Any], containers: list[tuple[str, str, Mapping[str, Any]]]) -> Iterator[tuple[str, str]]:
    def refused(path: str, value: object, control: str, wanted: str) -> tuple[str, str]:
        shown = "unset" if value is None else _show(value)
        return path, f"is {shown}; the Pod Security Standard {RESTRICTED!r} requires {wanted} ({control})"

    spec_path = f"{TEMPLATE}.spec"
    volumes = pod.get("volumes")
    if isinstance(volumes, list):
        for index, volume in enumerate(volumes):
            if not isinstance(volume, _MAPPINGS):
                continue
            for source in volume:
                if source not in VOLUME_NON_SOURCE_KEYS and source not in RESTRICTED_VOLUME_SOURCES:
                    yield (f"{spec_path}.volumes[{index}].{source}", (f"the volume type {source!r} is not allowed by "
                           f"the Pod Security Standard {RESTRICTED!r} (volume types: "
                           f"{', '.join(sorted(RESTRICTED_VOLUME_SOURCES))})"))
    raw_context = pod.get("securityContext")
    pod_context: Mapping[str, Any] = raw_context if isinstance(raw_context, _MAPPINGS) else {}
    pod_non_root = pod_context.get("runAsNonRoot")
    pod_seccomp = _get(pod_context, "seccompProfile", "type")
    if pod_context.get("runAsUser") == 0:
        yield refused(f"{spec_path}.securityContext.runAsUser", 0, "running as non-root user", "a non-zero user")
    if pod_non_root is False:
        yield refused(f"{spec_path}.securityContext.runAsNonRoot", False, "running as non-root", "true")
    for _list_name, path, container in containers:
        context = container.get("securityContext")
        if not isinstance(context, _MAPPINGS):
            context = {}
        here = f"{path}.securityContext"
        if context.get("allowPrivilegeEscalation") is not False:
            yield refused(f"{here}.allowPrivilegeEscalation", context.get("allowPrivilegeEscalation"),
                          "privilege escalation", "false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_non_root is not True):
            yield refused(f"{here}.runAsNonRoot", non_root, "running as non-root",
                          "true here or in spec.template.spec.securityContext")
        if context.get("runAsUser") == 0:
            yield refused(f"{here}.runAsUser", 0, "running as non-root user", "a non-zero user")
        seccomp = _get(context, "seccompProfile", "type")
        if seccomp not in SECCOMP_RESTRICTED_TYPES and (seccomp is not None or pod_seccomp not in SECCOMP_RESTRICTED_TYPES):
            yield refused(f"{here}.seccompProfile.type", seccomp, "seccomp",
                          "RuntimeDefault or Localhost here or in spec.template.spec.securityContext")
        dropped = _get(context, "capabilities", "drop")
        if not isinstance(dropped, list) or "ALL" not in dropped:
            yield refused(f"{here}.capabilities.drop", dropped, "capabilities", "a list containing ALL")
        added = _get(context, "capabilities", "add")
        if isinstance(added, list):
            for index, capability in enumerate(added):
                if capability not in RESTRICTED_CAPABILITIES:
                    yield refused(f"{here}.capabilities.add[{index}]", capability, "capabilities",
                                  "no capability but NET_BIND_SERVICE")


def _show(value: object) -> str:
    """A value for a message, as YAML would write a scalar; short, whatever the input holds."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
