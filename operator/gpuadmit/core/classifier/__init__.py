"""Tell training from inference by reading a pod template the way an engineer would.

``classify(spec_class, template)`` returns the class and one human sentence naming
the evidence. An explicit ``spec.class`` wins. Otherwise every signal found in the
template (images, commands, args, env, ports, probes, restart policy, labels) adds
its weight to the serving side or the training side, and the heavier side wins.
Weighing instead of taking the first match is what lets "an image called trainer
that runs vllm serve" come out as inference, and "torchrun with a readiness probe
on its metrics port" come out as training.

Weights (see docs/classifier.md): a named serving stack or training launcher in the
command is decisive (10); a stack's image running its own entrypoint, a training
script or argument, a serving framework, a port with a readiness probe are strong
(5-8); env vars, labels, names and the restart policy are supporting (1-6). Within
one category only the strongest hit counts, so twenty NCCL_* variables do not
outvote one ``vllm serve``. A side needs ``DECISIVE_SCORE`` to win; below that the
workload falls back to training and the reason says so.

Labels under ``gpuadmit.io/`` are ignored: tenants set them, and a tenant must not
be able to buy the inference price with a label (``spec.class`` is the visible,
audited way to say what a workload is).

It runs for every pending workload on every cycle, so it never re-serialises the
template: it joins each container's command and args once, splits them into tokens
and looks the tokens up in tables (programs, two-word commands, module prefixes,
flags; they live in ``classifier.signals``, apart from this logic); the only regexes are a few precompiled ones, and an image pattern runs only
when one of its anchor words is among the image's words. Malformed input (None, strings where lists
belong, junk containers) counts as no signal; nothing here raises.

Ties go to training, like the fallback: a workload whose evidence cancels out is not
given the serving price on a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from gpuadmit.core.classifier.signals import (
    ANY_ADDRESS,
    COMMAND_FIRST_WORDS,
    COMMANDS,
    COMPONENT_LABELS,
    CONFIG_SUFFIXES,
    ENV_NAMES,
    ENV_PREFIX_STRINGS,
    ENV_PREFIXES,
    FLAG_SIGNALS,
    HF_EXAMPLE_STEM,
    IMAGE_RE,
    IMAGE_SIGNALS_BY_WORD,
    INFERENCE,
    INTERACTIVE_NAME_PARTS,
    KUBEFLOW_CONTAINER_NAMES,
    LABEL_KEY_PREFIXES,
    LISTEN_FLAGS,
    MODULE_FLAGS,
    MODULE_PREFIXES,
    MODULES,
    NOT_A_SERVING_TOOL,
    NOT_SERVING_WORD_PREFIXES,
    OFFLINE_WORD_PREFIXES,
    PROGRAMS,
    SCRIPT_SUFFIXES,
    SERVE_SUBCOMMANDS,
    SERVE_WORDS,
    SERVER_PROGRAM_SUFFIXES,
    SERVING_NAME_PARTS,
    SERVING_NAME_WORDS,
    SIDE_PORT_NAMES,
    SIDE_PORTS,
    SIDECAR_NAME_PARTS,
    TOKENS,
    TRAIN_KEY_PREFIXES,
    TRAIN_KEYS,
    TRAIN_SUBCOMMANDS,
    TRAIN_WORD_PREFIXES,
    TRAIN_WORDS,
    TRAINING,
    TRAINING_PORT_NAMES,
    TRAINING_PORTS,
    WEB_SERVER,
    Signal,
)
from gpuadmit.core.model import GPU_RESOURCE, WorkloadClass

# The winning side needs at least this much; one port alone (3) or a run-to-completion
# restart policy alone (3) is enough, one NCCL variable (1) is not.
DECISIVE_SCORE = 3

FALLBACK_TAIL = "; defaulting to training"
FALLBACK_REASON = "no serving or training signal found" + FALLBACK_TAIL
MAX_PHRASES_IN_REASON = 3
MAX_PHRASE_LENGTH = 120
TENANT_LABEL_PREFIX = "gpuadmit.io/"
# dict first: parsed YAML/JSON is dicts, and the ABC check behind Mapping costs more.
_MAPPING = (dict, Mapping)


class Evidence(NamedTuple):
    """One signal: which side it supports, how much, and how to say it.

    A NamedTuple rather than a frozen dataclass: a template yields a dozen of these per
    call and a tuple is several times cheaper to build.
    """

    workload_class: WorkloadClass
    category: str  # only the strongest hit per (class, category) counts
    weight: int
    phrase: str  # a verb phrase: "runs vllm serve", "exposes port 8000 with a readiness probe"
    container: str | None = None  # None for pod-level evidence
    subject: str = ""  # what the phrase names ("vllm serve", "train"): one thing is said once




def classify(spec_class: str | None, template: object, lean: KindLean | None = None) -> tuple[WorkloadClass, str]:
    """The workload's class and a one-sentence reason naming the evidence.

    ``spec_class`` is ``spec.class`` ("training", "inference", "auto" or None);
    ``template`` is the PodTemplateSpec (metadata + spec). Values of any other type
    are tolerated as "no signal": this never raises.
    ``lean``: the class the kind of a native object leans to and the words naming that kind
    (a Job leans training, a Deployment inference; see ``core.native``). It decides only where
    the template's evidence is not decisive: the template always decides when it can.
    """
    declared = spec_class.strip().lower() if isinstance(spec_class, str) else None
    if declared == TRAINING:
        return TRAINING, "spec.class is training"
    if declared == INFERENCE:
        # spec.class is tenant-written and inference earns more: a declaration may lower the
        # price, never raise it against clear evidence, or declaring would buy priority.
        workload_class, reason, decisive = _weigh(template)
        if workload_class == TRAINING and decisive:
            return TRAINING, f"spec.class says inference, but {reason}; a declared class cannot raise the price"
        return INFERENCE, "spec.class is inference"
    workload_class, reason, decisive = _weigh(template)
    if lean is not None and not decisive:
        workload_class, reason = lean.workload_class, f"{reason.removesuffix(FALLBACK_TAIL)}; {lean.kind_words} leans {lean.workload_class}"
    if declared and declared != "auto":
        reason = f"spec.class {spec_class!r} is not training, inference or auto, so the template decided: {reason}"
    return workload_class, reason


class KindLean(NamedTuple):
    """The class a native kind leans to when its template says nothing decisive."""

    workload_class: WorkloadClass
    kind_words: str  # "a Job", "a Deployment": how the reason names the kind


def classify_template(template: Any) -> tuple[WorkloadClass, str]:
    """Weigh the template's signals; see the module docstring for the rules."""
    workload_class, reason, _ = _weigh(template)
    return workload_class, reason


def _weigh(template: Any) -> tuple[WorkloadClass, str, bool]:
    """(class, reason, decisive): decisive is False when the class is only the fallback."""
    try:
        evidence = find_evidence(template)
    except Exception:  # noqa: BLE001 - junk of a shape nobody anticipated is no signal, not a crash
        evidence = []
    strongest: dict[tuple[str, str], Evidence] = {}
    for item in evidence:
        key = (item.workload_class, item.category)
        if item.weight > 0 and (key not in strongest or item.weight > strongest[key].weight):
            strongest[key] = item
    serving = sorted((e for e in strongest.values() if e.workload_class == INFERENCE), key=_by_weight)
    training = sorted((e for e in strongest.values() if e.workload_class == TRAINING), key=_by_weight)
    serving_score = sum(e.weight for e in serving)
    training_score = sum(e.weight for e in training)

    if max(serving_score, training_score) < DECISIVE_SCORE:
        weak = serving + training
        if not weak:
            return TRAINING, FALLBACK_REASON, False
        return TRAINING, f"no clear serving or training signal (only: {_describe(weak)}){FALLBACK_TAIL}", False
    if serving_score > training_score:
        winner, loser, workload_class = serving, training, INFERENCE
    else:
        winner, loser, workload_class = training, serving, TRAINING
    reason = _describe(winner)
    if loser and loser[0].weight >= DECISIVE_SCORE:
        reason += f", which outweighs that {_describe(loser[:1])}"
    return workload_class, reason, True


def _by_weight(item: Evidence) -> int:
    return -item.weight


def _describe(evidence: list[Evidence]) -> str:
    """The strongest phrases grouped by container: "container 'x' runs a, uses b and exposes c; the pod ..."."""
    chosen: list[Evidence] = []
    for item in evidence:
        if len(chosen) == MAX_PHRASES_IN_REASON:
            break
        # "runs vllm.entrypoints.x" and "runs -m vllm.entrypoints.x" are one piece of evidence, said once.
        if item.subject and any(
            other.subject and other.container == item.container and (item.subject in other.subject or other.subject in item.subject)
            for other in chosen
        ):
            continue
        chosen.append(item)
    groups: dict[str | None, list[str]] = {}
    for item in chosen:
        # Names and paths come from the tenant's manifest: keep the status readable whatever they are.
        phrase = item.phrase if len(item.phrase) <= MAX_PHRASE_LENGTH else item.phrase[: MAX_PHRASE_LENGTH - 3] + "..."
        groups.setdefault(item.container, []).append(phrase)
    parts = []
    for container, phrases in groups.items():
        subject = f"container '{container}' " if container is not None else "the pod "
        parts.append(subject + _join(phrases))
    return "; ".join(parts)


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --- reading the template -----------------------------------------------------------------


def find_evidence(template: Any) -> list[Evidence]:
    """Every signal in the template, unweighed. Junk anywhere yields nothing for that part."""
    # Helpers append to one list rather than yield: generators cost more than the work here.
    out: list[Evidence] = []
    metadata, pod_spec = _metadata_and_pod_spec(template)
    if metadata:
        _label_evidence(metadata, out)
    if pod_spec is None:
        return out
    restart_policy = pod_spec.get("restartPolicy")
    if restart_policy in ("Never", "OnFailure"):
        out.append(Evidence(TRAINING, "restart", 3, f"has restartPolicy {restart_policy}, so it runs to completion"))
    if isinstance(pod_spec.get("activeDeadlineSeconds"), int):
        out.append(Evidence(TRAINING, "deadline", 2, "has an activeDeadlineSeconds, so it is meant to finish"))
    containers = [c for c in _as_list(pod_spec.get("containers")) if isinstance(c, _MAPPING)]
    requests_gpu = [_requests_gpu(c) for c in containers]
    for index, container in enumerate(containers):
        # When some containers ask for GPUs, the others are sidecars: only their decisive
        # signals count, not the ports and probes every sidecar has.
        if any(requests_gpu):
            main = requests_gpu[index]
        else:
            names = _text(container.get("image")).lower() + " " + _text(container.get("name")).lower()
            main = not any(map(names.__contains__, SIDECAR_NAME_PARTS))
        _container_evidence(container, index, main, out)
    return out


def _metadata_and_pod_spec(template: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    if not isinstance(template, _MAPPING):
        return {}, None
    spec = template.get("spec")
    metadata = template.get("metadata")
    if not isinstance(spec, _MAPPING) and "containers" in template:
        spec = template  # a bare PodSpec: accept it rather than guess nothing
    if isinstance(spec, _MAPPING) and isinstance(spec.get("template"), _MAPPING):
        # A Deployment/Job spec where a pod template was expected: read its template.
        return _metadata_and_pod_spec(spec["template"])
    return (metadata if isinstance(metadata, _MAPPING) else {}), (spec if isinstance(spec, _MAPPING) else None)


def _label_evidence(metadata: Mapping[str, Any], out: list[Evidence]) -> None:
    for field in ("labels", "annotations"):
        pairs = metadata.get(field)
        if not isinstance(pairs, _MAPPING):
            continue
        for key, value in pairs.items():
            if not isinstance(key, str) or key.startswith(TENANT_LABEL_PREFIX):
                continue
            for prefix, workload_class, weight in LABEL_KEY_PREFIXES:
                if key.startswith(prefix):
                    out.append(Evidence(workload_class, "tool-label", weight, f"carries the {field[:-1]} {key}"))
                    break
            if key in COMPONENT_LABELS and isinstance(value, str):
                named = _class_named_by(value.lower())
                if named is not None:
                    weight = 4 if key == "app.kubernetes.io/component" else 3
                    out.append(Evidence(named, "name-label", weight, f"is labelled {key}={value}"))


def _container_evidence(container: Mapping[str, Any], index: int, main: bool, out: list[Evidence]) -> None:
    name = container.get("name")
    label = name[:63] if isinstance(name, str) and name else f"#{index}"  # 63: a DNS label, the most a real name has
    command = _strings(container.get("command"))
    command_line = " ".join(command + _strings(container.get("args"))).lower()

    command_evidence: list[Evidence] = []
    if command_line:
        _token_evidence(command_line, label, command_evidence)
    runs_a_server = False
    if command_evidence:
        if _launches_a_server(command_evidence):
            # "mpirun tritonserver", "deepspeed inference_server.py": the launcher only starts a server.
            command_evidence = [item._replace(weight=2) if item.category == "launcher" else item for item in command_evidence]
        runs_a_server = any(item.workload_class == INFERENCE and item.category in ("stack", "server") for item in command_evidence)
        out.extend(command_evidence)

    image = _text(container.get("image")).lower()
    candidates = sorted({index for word in _words(image) for index in IMAGE_SIGNALS_BY_WORD.get(word, ())}) if image else ()
    for index in candidates:
        regex, (workload_class, category, weight, stack) = IMAGE_RE[index]
        if regex.search(image):
            # A stack image whose entrypoint was replaced by an unrelated command is just a base image.
            own_entrypoint = not command or runs_a_server
            if not own_entrypoint and category != "interactive":
                weight = min(weight, 3)
            short = image.rsplit("/", 1)[-1] if len(image) > 60 else image
            out.append(Evidence(workload_class, category, weight, f"uses the {stack} image {short}", label))
            break

    if main:
        env = container.get("env")
        if env:
            _env_evidence(env, label, out)
        _port_and_probe_evidence(container, label, out)
        _name_evidence(name, image, label, out)
        lifecycle = container.get("lifecycle")
        if isinstance(lifecycle, _MAPPING) and isinstance(lifecycle.get("preStop"), _MAPPING):
            out.append(Evidence(INFERENCE, "drain", 2, "drains connections in a preStop hook", label))


def _launches_a_server(command_evidence: list[Evidence]) -> bool:
    serves = any(item.workload_class == INFERENCE and item.category in ("stack", "server", "script", "subcommand") for item in command_evidence)
    trains = any(item.workload_class == TRAINING and item.category in ("script", "train-args", "subcommand", "config") for item in command_evidence)
    return serves and not trains


def _token_evidence(command_line: str, label: str, out: list[Evidence]) -> None:
    """Programs, modules, scripts, subcommands and flags, read token by token in one pass."""
    tokens = TOKENS.findall(command_line)
    count = len(tokens)
    previous = ""
    for position, token in enumerate(tokens):
        following = tokens[position + 1] if position + 1 < count else ""
        if token[0] in ";&|":
            previous = ""
            continue
        if token[0] == "-":
            if token in MODULE_FLAGS:
                if following:
                    _stem_evidence(following, following, label, 8, out)
            else:
                _flag_evidence(token, following, label, out)
            previous = token
            continue
        # "--backend vllm" names a value, not a program that runs.
        after_long_flag = previous[:2] == "--" and "=" not in previous
        previous = token
        base = token.rsplit("/", 1)[-1] if "/" in token else token
        if not after_long_flag:
            signal = COMMANDS.get((base, following)) if base in COMMAND_FIRST_WORDS else None
            if signal is not None:
                out.append(_command_evidence(signal, f"{base} {following}", label))
            elif (signal := PROGRAMS.get(base)) is not None:
                out.append(_command_evidence(signal, base, label))
            elif token.startswith(MODULE_PREFIXES):
                signal = next(signal for prefix, signal in MODULES if token.startswith(prefix))
                out.append(_command_evidence(signal, token, label))
            elif base.endswith(SERVER_PROGRAM_SUFFIXES) and _is_program_name(base):
                # tts-server, model-server, api_server: a program named for serving serves.
                out.append(_command_evidence(WEB_SERVER, base, label))
            if token in TRAIN_SUBCOMMANDS:
                out.append(Evidence(TRAINING, "subcommand", 6, f"runs the '{token}' subcommand", label, token))
                continue
            if token in SERVE_SUBCOMMANDS and position > 0:
                program = tokens[position - 1].rsplit("/", 1)[-1]
                if program and program[0] not in ";&|" and program not in NOT_A_SERVING_TOOL:
                    out.append(Evidence(INFERENCE, "subcommand", 7, f"runs {program} {token}", label, token))
                    continue
        if "=" in token:
            key, _, token = token.partition("=")
            if key in TRAIN_KEYS or key.startswith(TRAIN_KEY_PREFIXES):
                out.append(Evidence(TRAINING, "train-args", 6, f"sets {key}", label, key))
            base = token.rsplit("/", 1)[-1]
        if base.endswith(SCRIPT_SUFFIXES):
            _stem_evidence(base.rsplit(".", 1)[0], base, label, 8, out)
        elif base.endswith(CONFIG_SUFFIXES):
            stem = base.rsplit(".", 1)[0]
            if _is_training_name(_words(stem)):
                out.append(Evidence(TRAINING, "config", 5, f"reads the training config {base}", label, stem))


def _is_program_name(base: str) -> bool:
    """A bare program name, not a value ("host:port", "a=b", "model.gguf") or a side tool (metrics-server)."""
    if "." in base or ":" in base or "=" in base:
        return False
    return not any(word.startswith(NOT_SERVING_WORD_PREFIXES) for word in _words(base))


def _command_evidence(signal: Signal, shown: str, label: str) -> Evidence:
    workload_class, category, weight = signal
    if category == "launcher":
        phrase = f"launches {shown}"
    elif category == "interactive":
        phrase = f"runs {shown}, an interactive session"
    elif category == "offline":
        phrase = f"runs the offline job {shown}"
    else:
        phrase = f"runs {shown}"
    return Evidence(workload_class, category, weight, phrase, label, shown)


def _flag_evidence(token: str, next_token: str, label: str, out: list[Evidence]) -> None:
    shown, equals, value = token.partition("=")
    name = shown.lstrip("-").replace("_", "-")
    hit = FLAG_SIGNALS.get(name)
    if hit is not None:
        out.append(Evidence(hit[0], hit[1], hit[2], f"passes {shown}", label))
        return
    if not equals:
        value = next_token
    if name in LISTEN_FLAGS and ANY_ADDRESS.match(value):
        out.append(Evidence(INFERENCE, "listen", 2, f"listens on {value}", label))
    elif name == "config-file" or name == "config":
        base = value.rsplit("/", 1)[-1]
        if base.endswith(CONFIG_SUFFIXES) and _is_training_name(_words(base.rsplit(".", 1)[0])):
            out.append(Evidence(TRAINING, "config", 5, f"reads the training config {base}", label, base))


def _stem_evidence(stem: str, shown: str, label: str, weight: int, out: list[Evidence]) -> None:
    """A script or module name: benchmark and eval scripts first, since 'benchmark_serving' serves nothing."""
    words = _words(stem)
    training = _is_training_name(words)
    serving = not SERVE_WORDS.isdisjoint(words)
    if serving and any(word.startswith(NOT_SERVING_WORD_PREFIXES) for word in words):
        serving = False
    if not training and any(word.startswith(OFFLINE_WORD_PREFIXES) for word in words):
        if serving:
            out.append(Evidence(INFERENCE, "script", 5, f"runs {shown}", label, stem))
        else:
            out.append(Evidence(TRAINING, "offline", 4, f"runs {shown}, an offline job that serves no traffic", label, stem))
    elif training or HF_EXAMPLE_STEM.match(stem):
        out.append(Evidence(TRAINING, "script", weight, f"runs {shown}", label, stem))
    elif serving:
        out.append(Evidence(INFERENCE, "script", 5, f"runs {shown}", label, stem))


def _words(name: str) -> list[str]:
    """'llama3_lora-sft.v2' -> ['llama3', 'lora', 'sft', 'v2']: a name split where people split it."""
    return name.replace("_", "-").replace(".", "-").replace("/", "-").replace(":", "-").split("-")


def _is_training_name(words: list[str]) -> bool:
    return any(word.startswith(TRAIN_WORD_PREFIXES) or word in TRAIN_WORDS for word in words) or (
        "fine" in words and any(word.startswith("tun") for word in words)  # fine_tune, fine-tuning
    )


def _class_named_by(name: str) -> WorkloadClass | None:
    """The class a container, image or label value names ("llm-trainer", "chat-predictor"), if any."""
    words = _words(name)
    if _is_training_name(words) or "launcher" in words or any(map(name.__contains__, INTERACTIVE_NAME_PARTS)):
        return TRAINING
    if any(map(name.__contains__, SERVING_NAME_PARTS)) or not SERVING_NAME_WORDS.isdisjoint(words):
        return INFERENCE
    return None


def _env_evidence(env: Any, label: str, out: list[Evidence]) -> None:
    for item in _as_list(env):
        var = item.get("name") if isinstance(item, _MAPPING) else None
        if not isinstance(var, str):
            continue
        hit = ENV_NAMES.get(var)
        if hit is None and var.startswith(ENV_PREFIX_STRINGS):
            hit = next((workload_class, weight) for prefix, workload_class, weight in ENV_PREFIXES if var.startswith(prefix))
        if hit is not None:
            category = "env-dist" if hit[0] == TRAINING and hit[1] >= 4 else "env"
            out.append(Evidence(hit[0], category, hit[1], f"sets {var}", label))


def _port_and_probe_evidence(container: Mapping[str, Any], label: str, out: list[Evidence]) -> None:
    serving_ports: list[int] = []
    for port in _as_list(container.get("ports")):
        if not isinstance(port, _MAPPING):
            continue
        number, port_name = port.get("containerPort"), _text(port.get("name")).lower()
        if not isinstance(number, int):
            continue
        if number in TRAINING_PORTS or any(map(port_name.__contains__, TRAINING_PORT_NAMES)):
            out.append(Evidence(TRAINING, "dist-port", 4, f"opens the rendezvous port {number}", label))
        elif number not in SIDE_PORTS and not any(map(port_name.__contains__, SIDE_PORT_NAMES)):
            serving_ports.append(number)

    readiness = _probe_target(container.get("readinessProbe"))
    liveness = _probe_target(container.get("livenessProbe")) or _probe_target(container.get("startupProbe"))
    shown_port = serving_ports[0] if serving_ports else None
    if readiness and readiness[0] != "exec" and not _is_side_port(readiness[1]):
        port = shown_port if shown_port is not None else readiness[1]
        where = f" on {readiness[2]}" if isinstance(readiness[2], str) else ""
        out.append(Evidence(INFERENCE, "port", 5, f"exposes port {port} with a readiness probe{where}", label))
    elif shown_port is not None and liveness and liveness[0] in ("httpGet", "grpc") and not _is_side_port(liveness[1]):
        out.append(Evidence(INFERENCE, "port", 4, f"exposes port {shown_port} with an HTTP health probe", label))
    elif shown_port is not None and readiness:
        out.append(Evidence(INFERENCE, "port", 4, f"exposes port {shown_port} with a readiness probe", label))
    elif shown_port is not None:
        out.append(Evidence(INFERENCE, "port", 3, f"exposes port {shown_port}", label))
    elif readiness and readiness[0] == "exec":
        out.append(Evidence(INFERENCE, "port", 2, "has a readiness probe", label))


def _probe_target(probe: Any) -> tuple[str, Any, Any] | None:
    """(handler, port, path) of a probe; ("exec", None, None) for a command probe; None for no probe."""
    if not isinstance(probe, _MAPPING):
        return None
    for handler in ("httpGet", "grpc", "tcpSocket"):
        action = probe.get(handler)
        if isinstance(action, _MAPPING):
            return handler, action.get("port"), action.get("path")
    return "exec", None, None


def _is_side_port(port: Any) -> bool:
    """A probe aimed at a metrics, dashboard or rendezvous port says nothing about serving."""
    if isinstance(port, int):
        return port in SIDE_PORTS or port in TRAINING_PORTS
    lowered = port.lower() if isinstance(port, str) else ""
    return any(map(lowered.__contains__, SIDE_PORT_NAMES + TRAINING_PORT_NAMES))


def _name_evidence(name: Any, image: str, label: str, out: list[Evidence]) -> None:
    if name in KUBEFLOW_CONTAINER_NAMES:
        # Kubeflow's training operators require these names for their jobs' main container.
        out.append(Evidence(TRAINING, "name", 3, f"has the Kubeflow training container name '{name}'", label))
        return
    repository = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    for what, text in (("name", _text(name).lower()), ("image name", repository)):
        if text:
            named = _class_named_by(text)
            if named is not None:
                out.append(Evidence(named, "name", 3, f"has the {what} '{text}'", label))
                return


# --- tolerant accessors -------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item if isinstance(item, str) else str(item) for item in value if isinstance(item, (str, int, float))]
    return []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _requests_gpu(container: Mapping[str, Any]) -> bool:
    resources = container.get("resources")
    if not isinstance(resources, _MAPPING):
        return False
    for field in ("limits", "requests"):
        amounts = resources.get(field)
        if isinstance(amounts, _MAPPING) and str(amounts.get(GPU_RESOURCE, "0")) not in ("0", ""):
            return True
    return False
