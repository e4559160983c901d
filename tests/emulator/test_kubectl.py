"""kubectl against the emulated API server: OpenAPI (apply's validation, explain), Table output
(get, get -w), server-side apply and managedFields.

Each behaviour is checked twice: over plain HTTP (what a real server answers), and with the real
``kubectl`` when it is on the PATH (skipped, saying so, when it is not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from kubeapi_emulator.tables import human_duration, jsonpath

from .conftest import CRDS_DIR, requires_emulator

pytestmark = [pytest.mark.emulator, requires_emulator]

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on the PATH: the real-kubectl half of "
                                                           "these checks is skipped (the HTTP half still runs)")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
GW = "/apis/gpuadmit.io/v1alpha1/namespaces/default/gpuworkloads"


def workload(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": name},
            "spec": {"gpus": gpus, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}, **spec}}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with EmulatedApiServer(crds=[CRDS_DIR]) as url:
        yield url, write_kubeconfig(url, tmp_path / "kubeconfig")


def kubectl(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}  # a fresh discovery cache
    result = subprocess.run([KUBECTL, *args], check=False, input=input, capture_output=True, text=True, env=env, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def write(path: Path, *objects: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(objects))
    return path


# -- OpenAPI ----------------------------------------------------------------------------------------

def test_openapi_v3_lists_every_group_version_and_each_document_describes_its_kinds(server) -> None:
    url, _ = server
    root = requests.get(f"{url}/openapi/v3", timeout=10).json()
    entry = root["paths"]["apis/gpuadmit.io/v1alpha1"]["serverRelativeURL"]
    assert entry.startswith("/openapi/v3/apis/gpuadmit.io/v1alpha1?hash=")
    assert "api/v1" in root["paths"] and "apis/coordination.k8s.io/v1" in root["paths"]
    document = requests.get(url + entry, timeout=10).json()
    assert document["openapi"].startswith("3.0")
    schema = document["components"]["schemas"]["io.gpuadmit.v1alpha1.GPUWorkload"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "gpuadmit.io", "kind": "GPUWorkload", "version": "v1alpha1"}]
    assert "gpus" in schema["properties"]["spec"]["properties"]  # the CRD's own schema
    meta_ref = schema["properties"]["metadata"]["allOf"][0]["$ref"]
    assert meta_ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]
    # kubectl apply sends fieldValidation=Strict only if the kind's PATCH operation declares it
    patch = document["paths"]["/apis/gpuadmit.io/v1alpha1/namespaces/{namespace}/gpuworkloads/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "GPUWorkload"
    assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in patch["parameters"])
    assert requests.get(f"{url}/openapi/v3/apis/nothing.example.com/v1", timeout=10).status_code == 404


def test_openapi_v3_follows_crds_as_they_come_and_go(server) -> None:
    url, _ = server
    crd = yaml.safe_load((CRDS_DIR / "marginpolicies.gpuadmit.io.yaml").read_text())
    crd["metadata"]["name"] = "widgets.example.com"
    crd["spec"]["group"] = "example.com"
    crd["spec"]["names"] = {"kind": "Widget", "plural": "widgets", "singular": "widget"}
    created = requests.post(f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd, timeout=10)
    assert created.status_code == 201
    assert "apis/example.com/v1alpha1" in requests.get(f"{url}/openapi/v3", timeout=10).json()["paths"]
    requests.delete(f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com", timeout=10)
    assert "apis/example.com/v1alpha1" not in requests.get(f"{url}/openapi/v3", timeout=10).json()["paths"]


def test_openapi_v2_is_one_swagger_document_of_everything_served(server) -> None:
    url, _ = server
    document = requests.get(f"{url}/openapi/v2", headers={"Accept": "application/json"}, timeout=10).json()
    assert document["swagger"] == "2.0"
    definition = document["definitions"]["io.gpuadmit.v1alpha1.MarginPolicy"]
    assert definition["x-kubernetes-group-version-kind"][0]["kind"] == "MarginPolicy"
    assert definition["properties"]["metadata"]["$ref"] == "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    assert "io.k8s.api.core.v1.Pod" in document["definitions"]
    assert "/api/v1/namespaces/{namespace}/pods/{name}" in document["paths"]


def test_field_validation_strict_refuses_warn_warns_ignore_drops(server) -> None:
    url, _ = server
    body = workload("typo", foo="bar")
    strict = requests.post(f"{url}{GW}?fieldValidation=Strict", json=body, timeout=10)
    assert strict.status_code == 400
    assert 'strict decoding error: unknown field "spec.foo"' in strict.json()["message"]
    warned = requests.post(f"{url}{GW}", json=body, timeout=10)  # Warn is the default
    assert warned.status_code == 201
    assert warned.headers["Warning"] == '299 - "unknown field \\"spec.foo\\""'
    assert "foo" not in warned.json()["spec"]  # pruned, as ever
    ignored = requests.patch(f"{url}{GW}/typo?fieldValidation=Ignore", json={"spec": {"bar": 1}},
                             headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    assert ignored.status_code == 200 and "Warning" not in ignored.headers
    clean = requests.post(f"{url}{GW}?fieldValidation=Strict", json=workload("clean"), timeout=10)
    assert clean.status_code == 201 and "Warning" not in clean.headers
    bad = requests.post(f"{url}{GW}?fieldValidation=Loud", json=workload("other"), timeout=10)
    assert bad.status_code == 400


@needs_kubectl
def test_kubectl_apply_validates_by_default_and_explain_works(server, tmp_path: Path) -> None:
    _, kubeconfig = server
    good = write(tmp_path / "good.yaml", workload("chat"))
    assert "gpuworkload.gpuadmit.io/chat created" in kubectl(kubeconfig, "apply", "-f", str(good)).stdout
    bad = write(tmp_path / "bad.yaml", workload("typo", foo="bar"))
    refused = kubectl(kubeconfig, "apply", "-f", str(bad), check=False)
    assert refused.returncode != 0
    assert 'unknown field "spec.foo"' in refused.stderr and "openapi" not in refused.stderr
    warned = kubectl(kubeconfig, "apply", "--validate=warn", "-f", str(bad))
    assert 'Warning: unknown field "spec.foo"' in warned.stderr
    explained = kubectl(kubeconfig, "explain", "gpuworkload.spec").stdout
    assert "KIND:       GPUWorkload" in explained and "gpus\t<integer> -required-" in explained
    policy = kubectl(kubeconfig, "explain", "marginpolicy.spec.preemption").stdout
    assert "KIND:       MarginPolicy" in policy and "minRuntimeSeconds" in policy
    assert "FIELDS:" in kubectl(kubeconfig, "explain", "kopfpeering").stdout


# -- Tables -----------------------------------------------------------------------------------------

def test_jsonpath_and_ages_as_kubectl_evaluates_them() -> None:
    obj = {"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Accepted", "status": "True"}]},
           "metadata": {"labels": {"a.b/c": "x"}}, "spec": {"list": [1, 2]}}
    assert jsonpath(obj, '.status.conditions[?(@.type=="Accepted")].status') == ["True"]
    assert jsonpath(obj, ".status.conditions[*].type") == ["A", "Accepted"]
    assert jsonpath(obj, r"{.metadata.labels.a\.b/c}") == ["x"]
    assert jsonpath(obj, ".spec.list[1]") == [2] and jsonpath(obj, ".spec.missing") == []
    assert [human_duration(s) for s in (5, 119, 150, 3600 * 5 + 60, 3600 * 30, 86400 * 3 + 3600)] == [
        "5s", "119s", "2m30s", "5h1m", "30h", "3d1h"]


def test_a_table_carries_the_crds_printer_columns(server) -> None:
    url, _ = server
    requests.post(f"{url}{GW}", json=workload("chat", gpus=2), timeout=10)
    requests.patch(f"{url}{GW}/chat/status", json={"status": {"phase": "Queued", "class": "inference",
                                                              "reason": "NoCapacity", "queuePosition": 3,
                                                              "queue": "3"}},
                   headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    table = requests.get(f"{url}{GW}", headers={"Accept": TABLE}, timeout=10).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    names = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert names[:4] == [("Name", 0), ("Class", 0), ("Phase", 0), ("GPUs", 0)] and ("Queue", 1) in names
    cells = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"], strict=True))
    assert (cells["Name"], cells["Class"], cells["Phase"], cells["GPUs"], cells["Queue"]) == (
        "chat", "inference", "Queued", 2, "3")
    assert cells["Margin"] is None and cells["Age"].endswith("s")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    one = requests.get(f"{url}{GW}/chat?includeObject=Object", headers={"Accept": TABLE}, timeout=10).json()
    assert one["rows"][0]["object"]["spec"]["gpus"] == 2
    plain = requests.get(f"{url}{GW}", timeout=10).json()
    assert plain["kind"] == "GPUWorkloadList"  # without the Accept header: the list, as ever


def test_built_in_kinds_get_the_real_servers_columns(server) -> None:
    url, _ = server
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]}}
    requests.post(f"{url}/api/v1/namespaces/default/pods", json=pod, timeout=10)
    requests.patch(f"{url}/api/v1/namespaces/default/pods/p/status", headers={"Content-Type": "application/merge-patch+json"},
                   json={"status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                       {"name": "a", "ready": True, "restartCount": 2}, {"name": "b", "ready": False, "restartCount": 0}]}},
                   timeout=10)
    table = requests.get(f"{url}/api/v1/namespaces/default/pods", headers={"Accept": TABLE}, timeout=10).json()
    cells = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"], strict=True))
    assert (cells["Ready"], cells["Status"], cells["Restarts"], cells["Node"], cells["IP"]) == ("1/2", "Running", 2, "n1", "10.0.0.5")
    assert {c["name"]: c["priority"] for c in table["columnDefinitions"]}["Node"] == 1  # -o wide only
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    requests.post(f"{url}/api/v1/nodes", json=node, timeout=10)
    nodes = requests.get(f"{url}/api/v1/nodes", headers={"Accept": TABLE}, timeout=10).json()
    assert [c["name"] for c in nodes["columnDefinitions"]][:5] == ["Name", "Status", "Roles", "Age", "Version"]
    assert nodes["rows"][0]["cells"][1] == "Ready"


def test_events_print_as_the_real_server_prints_them(server, tmp_path: Path) -> None:
    url, kubeconfig = server
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "chat.17a"},
             "involvedObject": {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "chat", "namespace": "default"},
             "reason": "Admitted", "message": "admitted 2 GPUs on n1 ", "type": "Normal", "count": 3,
             "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
             "reportingComponent": "gpuadmit", "reportingInstance": "gpuadmit-0"}
    assert requests.post(f"{url}/api/v1/namespaces/default/events", json=event, timeout=10).status_code == 201
    table = requests.get(f"{url}/api/v1/namespaces/default/events", headers={"Accept": TABLE}, timeout=10).json()
    definitions = table["columnDefinitions"]
    assert [c["name"] for c in definitions if c["priority"] == 0] == ["Last Seen", "Type", "Reason", "Object", "Message"]
    cells = dict(zip([c["name"] for c in definitions], table["rows"][0]["cells"], strict=True))
    assert (cells["Type"], cells["Reason"], cells["Object"], cells["Message"]) == ("Normal", "Admitted", "gpuworkload/chat", "admitted 2 GPUs on n1")
    assert (cells["Source"], cells["Count"], cells["Name"]) == ("gpuadmit, gpuadmit-0", 3, "chat.17a")
    assert re.fullmatch(r"\d+[dy](\d+d)?", cells["Last Seen"]), cells  # an age, as kubectl shows it, not the timestamp
    if KUBECTL is None:
        pytest.skip("kubectl is not on the PATH: the real-kubectl half of this check is skipped")
    lines = kubectl(kubeconfig, "get", "events").stdout.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split()[1:5] == ["Normal", "Admitted", "gpuworkload/chat", "admitted"]


def test_a_watch_asking_for_tables_streams_one_row_per_event(server) -> None:
    url, _ = server
    listing = requests.get(f"{url}{GW}", headers={"Accept": TABLE}, timeout=10).json()
    version = listing["metadata"]["resourceVersion"]
    with requests.get(f"{url}{GW}?watch=true&resourceVersion={version}", headers={"Accept": TABLE},
                      stream=True, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("application/json")
        requests.post(f"{url}{GW}", json=workload("one"), timeout=10)
        requests.post(f"{url}{GW}", json=workload("two"), timeout=10)
        lines = stream.iter_lines()
        first, second = json.loads(next(lines)), json.loads(next(lines))
    assert first["type"] == "ADDED" and first["object"]["kind"] == "Table"
    assert first["object"]["rows"][0]["cells"][0] == "one" and first["object"]["columnDefinitions"]
    assert second["object"]["rows"][0]["cells"][0] == "two" and "columnDefinitions" not in second["object"]


@needs_kubectl
def test_kubectl_get_shows_the_columns_and_get_w_streams_rows(server, tmp_path: Path) -> None:
    url, kubeconfig = server
    kubectl(kubeconfig, "apply", "-f", str(write(tmp_path / "wl.yaml", workload("chat", gpus=2))))
    requests.patch(f"{url}{GW}/chat/status", json={"status": {"phase": "Admitted", "class": "inference",
                                                              "marginPerGPUHour": 4.8, "reason": "Admitted"}},
                   headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    lines = kubectl(kubeconfig, "get", "gw").stdout.splitlines()
    assert lines[0].split() == ["NAME", "CLASS", "PHASE", "GPUS", "REPLICAS", "MARGIN", "REASON", "AGE"]
    assert lines[1].split()[:7] == ["chat", "inference", "Admitted", "2", "1", "4.8", "Admitted"]
    assert "QUEUE" in kubectl(kubeconfig, "get", "gw", "-o", "wide").stdout
    assert kubectl(kubeconfig, "get", "pods").stderr.strip() == "No resources found in default namespace."
    kubectl(kubeconfig, "run", "p1", "--image=busybox")
    pods = kubectl(kubeconfig, "get", "pods", "-o", "wide").stdout.splitlines()
    assert pods[0].split()[:6] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"] and "NODE" in pods[0]
    watcher = subprocess.Popen([KUBECTL, "get", "gw", "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)})
    try:
        time.sleep(2)  # the list, then the watch
        kubectl(kubeconfig, "apply", "-f", str(write(tmp_path / "wl2.yaml", workload("late", gpus=3))))
        time.sleep(2)
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=10)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:2] == ["NAME", "CLASS"], err
    assert any(row[0] == "late" and "3" in row for row in rows[1:]), out + err


# -- server-side apply -------------------------------------------------------------------------------

def apply_patch(url: str, name: str, body: dict[str, Any], manager: str, force: bool = False) -> requests.Response:
    return requests.patch(f"{url}{GW}/{name}?fieldManager={manager}" + ("&force=true" if force else ""),
                          data=yaml.safe_dump(body), headers={"Content-Type": "application/apply-patch+yaml"}, timeout=10)


def test_server_side_apply_creates_updates_records_managers_and_refuses_conflicts(server) -> None:
    url, _ = server
    created = apply_patch(url, "ssa", {**workload("ssa", gpus=2), "metadata": {"name": "ssa", "labels": {"team": "a"}}}, "alice")
    assert created.status_code == 201
    entry = created.json()["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"]) == ("alice", "Apply")
    assert entry["fieldsV1"]["f:spec"]["f:gpus"] == {} and entry["fieldsV1"]["f:metadata"]["f:labels"] == {"f:team": {}}
    # alice stops applying the label: it goes; she changes gpus: it changes
    updated = apply_patch(url, "ssa", workload("ssa", gpus=3), "alice")
    assert updated.status_code == 200
    assert updated.json()["spec"]["gpus"] == 3 and "team" not in (updated.json()["metadata"].get("labels") or {})
    # bob applies the same value: co-owner, no conflict; a different one: 409, unless forced
    assert apply_patch(url, "ssa", workload("ssa", gpus=3), "bob").status_code == 200
    conflict = apply_patch(url, "ssa", workload("ssa", gpus=5), "bob")
    assert conflict.status_code == 409
    assert 'conflict with "alice"' in conflict.json()["message"] and ".spec.gpus" in conflict.json()["message"]
    forced = apply_patch(url, "ssa", workload("ssa", gpus=5), "bob", force=True)
    assert forced.status_code == 200 and forced.json()["spec"]["gpus"] == 5
    owners = {e["manager"]: e for e in forced.json()["metadata"]["managedFields"]}
    assert "f:gpus" not in owners["alice"]["fieldsV1"]["f:spec"] and "f:gpus" in owners["bob"]["fieldsV1"]["f:spec"]
    unknown = apply_patch(url, "ssa", workload("ssa", gpus=5, foo=1), "bob")
    assert unknown.status_code == 400 and 'unknown field "spec.foo"' in unknown.json()["message"]
    # a plain write naming its manager is recorded as an Update and takes the fields it changed
    patched = requests.patch(f"{url}{GW}/ssa?fieldManager=editor", json={"spec": {"gpus": 6}},
                             headers={"Content-Type": "application/merge-patch+json"}, timeout=10).json()
    owners = {e["manager"]: e for e in patched["metadata"]["managedFields"]}
    assert owners["editor"]["operation"] == "Update" and "f:gpus" in owners["editor"]["fieldsV1"]["f:spec"]
    assert "f:gpus" not in owners["bob"]["fieldsV1"]["f:spec"]


@needs_kubectl
def test_kubectl_apply_server_side(server, tmp_path: Path) -> None:
    _, kubeconfig = server
    path = write(tmp_path / "wl.yaml", workload("ssa", gpus=2))
    assert "serverside-applied" in kubectl(kubeconfig, "apply", "--server-side", "-f", str(path)).stdout
    write(path, workload("ssa", gpus=4))
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(path))
    live = json.loads(kubectl(kubeconfig, "get", "gw", "ssa", "-o", "json", "--show-managed-fields").stdout)
    assert live["spec"]["gpus"] == 4
    assert [(e["manager"], e["operation"]) for e in live["metadata"]["managedFields"]] == [("kubectl", "Apply")]
    write(path, workload("ssa", gpus=1))
    conflict = kubectl(kubeconfig, "apply", "--server-side", "--field-manager=other", "-f", str(path), check=False)
    assert conflict.returncode != 0 and 'conflict with "kubectl"' in conflict.stderr
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", str(path))
    assert json.loads(kubectl(kubeconfig, "get", "gw", "ssa", "-o", "json").stdout)["spec"]["gpus"] == 1


# -- dry runs, protobuf bodies, categories --------------------------------------------------------------

def test_dry_run_answers_without_storing(server) -> None:
    url, _ = server
    created = requests.post(f"{url}{GW}?dryRun=All", json=workload("ghost"), timeout=10)
    assert created.status_code == 201 and created.json()["metadata"]["uid"]
    assert requests.get(f"{url}{GW}/ghost", timeout=10).status_code == 404
    requests.post(f"{url}{GW}", json=workload("real"), timeout=10)
    version = requests.get(f"{url}{GW}/real", timeout=10).json()["metadata"]["resourceVersion"]
    patched = requests.patch(f"{url}{GW}/real?dryRun=All", json={"spec": {"gpus": 7}},
                             headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    assert patched.status_code == 200 and patched.json()["spec"]["gpus"] == 7
    applied = apply_patch(url, "real", workload("real", gpus=5), "alice")
    assert applied.status_code == 200
    dry_applied = requests.patch(f"{url}{GW}/real?fieldManager=alice&dryRun=All", data=yaml.safe_dump(workload("real", gpus=6)),
                                 headers={"Content-Type": "application/apply-patch+yaml"}, timeout=10)
    assert dry_applied.json()["spec"]["gpus"] == 6
    assert requests.delete(f"{url}{GW}/real?dryRun=All", timeout=10).status_code == 200
    live = requests.get(f"{url}{GW}/real", timeout=10).json()
    assert live["spec"]["gpus"] == 5 and int(live["metadata"]["resourceVersion"]) == int(version) + 1
    assert requests.post(f"{url}{GW}?dryRun=Some", json=workload("x"), timeout=10).status_code == 400


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_protobuf_bodies_of_the_kinds_kubectl_sends_so_are_read(server) -> None:
    url, _ = server
    labels = _field(11, _field(1, b"gpuadmit.io/tier") + _field(2, b"gold"))
    namespace = _field(1, _field(1, b"team-a") + labels)
    envelope = b"k8s\x00" + _field(1, _field(1, b"v1") + _field(2, b"Namespace")) + _field(2, namespace)
    created = requests.post(f"{url}/api/v1/namespaces", data=envelope,
                            headers={"Content-Type": "application/vnd.kubernetes.protobuf"}, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["labels"]["gpuadmit.io/tier"] == "gold"
    node = b"k8s\x00" + _field(1, _field(1, b"v1") + _field(2, b"Node")) + _field(2, _field(1, _field(1, b"n")))
    refused = requests.post(f"{url}/api/v1/nodes", data=node,
                            headers={"Content-Type": "application/vnd.kubernetes.protobuf"}, timeout=10)
    assert refused.status_code == 415  # not read: said so, nothing stored
    garbage = requests.post(f"{url}/api/v1/namespaces", data=b"k8s\x00\xff\xff",
                            headers={"Content-Type": "application/vnd.kubernetes.protobuf"}, timeout=10)
    assert garbage.status_code == 400


@needs_kubectl
def test_kubectl_create_subcommands_diff_and_server_dry_runs(server, tmp_path: Path) -> None:
    _, kubeconfig = server
    kubectl(kubeconfig, "create", "namespace", "team-a")  # protobuf bodies, from kubectl's typed clients
    kubectl(kubeconfig, "label", "namespace", "team-a", "gpuadmit.io/tier=gold")
    kubectl(kubeconfig, "create", "configmap", "cm", "--from-literal=a=b", "-n", "team-a")
    kubectl(kubeconfig, "create", "secret", "generic", "s", "--from-literal=p=q", "-n", "team-a")
    kubectl(kubeconfig, "create", "serviceaccount", "bot", "-n", "team-a")
    assert json.loads(kubectl(kubeconfig, "get", "cm", "cm", "-n", "team-a", "-o", "json").stdout)["data"] == {"a": "b"}
    secret = json.loads(kubectl(kubeconfig, "get", "secret", "s", "-n", "team-a", "-o", "json").stdout)
    assert (secret["data"], secret["type"]) == ({"p": "cQ=="}, "Opaque")
    assert "gpuadmit.io/tier=gold" in kubectl(kubeconfig, "get", "ns", "team-a", "--show-labels").stdout
    path = write(tmp_path / "wl.yaml", workload("chat", gpus=1))
    kubectl(kubeconfig, "apply", "-f", str(path))
    write(path, workload("chat", gpus=2))
    diff = kubectl(kubeconfig, "diff", "-f", str(path), check=False)
    assert diff.returncode == 1 and "+  gpus: 2" in diff.stdout  # 1: there are differences
    kubectl(kubeconfig, "delete", "gw", "chat", "--dry-run=server")
    live = json.loads(kubectl(kubeconfig, "get", "gw", "chat", "-o", "json").stdout)
    assert live["spec"]["gpus"] == 1  # neither the diff nor the dry-run delete changed it
    assert kubectl(kubeconfig, "get", "all", "-n", "team-a").returncode == 0
