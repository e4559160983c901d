"""The tables the classifier looks a template's tokens up in, with the side each signal
supports and its weight (docs/classifier.md explains the scale): programs, two-word
commands, Python modules, images, environment variables, labels, names, flags, ports.
The logic that reads a template and weighs what it finds is in ``classifier/__init__.py``;
adding a serving stack or a training launcher is a change here only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gpuadmit.core.model import WorkloadClass

INFERENCE: WorkloadClass = "inference"
TRAINING: WorkloadClass = "training"

# --- command-line signals -------------------------------------------------------------
# The command and args of a container are split into tokens once and looked up in the
# tables below: dict and prefix lookups instead of dozens of regex scans per container.
_S, _T = INFERENCE, TRAINING
Signal = tuple[WorkloadClass, str, int]  # (class, category, weight)
SERVING_STACK: Signal = (_S, "stack", 10)
WEB_SERVER: Signal = (_S, "server", 7)
LAUNCHER: Signal = (_T, "launcher", 10)
INTERACTIVE: Signal = (_T, "interactive", 7)  # a person, not traffic, uses it: ranked with training
OFFLINE: Signal = (_T, "offline", 5)  # runs to completion and serves no traffic: ranked with training

# Programs, by the basename of the token that runs them.
PROGRAMS: Mapping[str, Signal] = {
    **dict.fromkeys((
        "tritonserver", "trtserver", "launch_triton_server.py", "text-generation-launcher", "text-generation-server",
        "text-embeddings-router", "trtllm-serve", "torchserve", "tensorflow_model_server", "llama-server", "llamafile",
        "infinity_emb", "xinference-local", "xinference", "xinference-supervisor", "xinference-worker",
        "lorax-launcher", "local-ai", "koboldcpp", "start-riva", "riva_start.sh", "nim_llm", "seldon-core-microservice",
        "dynamo-run", "ovms",
    ), SERVING_STACK),
    **dict.fromkeys(("uvicorn", "gunicorn", "hypercorn", "daphne", "waitress-serve", "litserve", "gradio"), WEB_SERVER),
    **dict.fromkeys((
        "torchrun", "deepspeed", "horovodrun", "mpirun", "mpiexec", "srun", "composer", "fairseq-train", "dlrover-run",
    ), LAUNCHER),
    **dict.fromkeys((
        "jupyter-lab", "jupyter-notebook", "jupyter-server", "jupyterhub-singleuser", "start-notebook.sh", "start-singleuser.sh",
        "code-server", "sshd",
    ), INTERACTIVE),
    **dict.fromkeys((
        "lm_eval", "lm-eval", "lighteval", "genai-perf", "perf_analyzer", "model-analyzer", "guidellm", "locust",
        "opencompass", "evalscope",
    ), OFFLINE),
}
# Two-word commands: (program, subcommand).
COMMANDS: Mapping[tuple[str, str], Signal] = {
    **dict.fromkeys((
        ("vllm", "serve"), ("sglang", "serve"), ("ollama", "serve"), ("lmdeploy", "serve"), ("openllm", "start"),
        ("openllm", "serve"), ("bentoml", "serve"), ("bentoml", "serve-http"), ("bentoml", "serve-grpc"),
        ("mlserver", "start"), ("serve", "run"), ("serve", "deploy"), ("serve", "start"), ("mlc_llm", "serve"),
        ("max", "serve"), ("dynamo", "serve"), ("aphrodite", "run"), ("trtllm", "serve"), ("tensorrt_llm", "serve"),
        ("monailabel", "start_server"),
    ), SERVING_STACK),
    **dict.fromkeys((("fastapi", "run"), ("flask", "run"), ("streamlit", "run")), WEB_SERVER),
    **dict.fromkeys((
        ("accelerate", "launch"), ("colossalai", "run"), ("lightning", "run"), ("tune", "run"),
        ("llamafactory-cli", "train"), ("axolotl", "train"), ("xtuner", "train"), ("swift", "sft"), ("swift", "pt"),
        ("swift", "rlhf"), ("trl", "sft"), ("trl", "dpo"), ("trl", "grpo"), ("trl", "kto"), ("trl", "orpo"),
        ("trl", "reward"), ("llm", "pretrain"), ("llm", "finetune"), ("ludwig", "train"), ("yolo", "train"),
        ("spacy", "train"),
    ), LAUNCHER),
    **dict.fromkeys((("jupyter", "lab"), ("jupyter", "notebook"), ("jupyter", "server")), INTERACTIVE),
    **dict.fromkeys((("vllm", "bench"), ("sglang", "bench_serving")), OFFLINE),
}
# Python modules and dotted entry points, by prefix; the first listed prefix that matches wins.
MODULES: tuple[tuple[str, Signal], ...] = (
    ("vllm.entrypoints.openai.run_batch", OFFLINE),
    ("vllm.entrypoints", SERVING_STACK),
    ("sglang.launch_server", SERVING_STACK),
    ("sglang_router.launch", SERVING_STACK),
    ("sglang.bench", OFFLINE),
    ("text_generation_server", SERVING_STACK),
    ("llama_cpp.server", SERVING_STACK),
    ("mii.serve", SERVING_STACK),
    ("mii.entrypoints", SERVING_STACK),
    ("kserve.", SERVING_STACK),
    ("huggingfaceserver", SERVING_STACK),
    ("sklearnserver", SERVING_STACK),
    ("xgbserver", SERVING_STACK),
    ("lgbserver", SERVING_STACK),
    ("pmmlserver", SERVING_STACK),
    ("infinity_emb", SERVING_STACK),
    ("ray.serve", SERVING_STACK),
    ("serve.run", SERVING_STACK),
    ("fastchat.serve", SERVING_STACK),
    ("lmdeploy.serve", SERVING_STACK),
    ("tensorrt_llm.serve", SERVING_STACK),
    ("tensorrt_llm.commands.serve", SERVING_STACK),
    ("caikit.runtime", SERVING_STACK),
    ("uvicorn", WEB_SERVER),
    ("gunicorn", WEB_SERVER),
    ("torch.distributed.run", LAUNCHER),
    ("torch.distributed.launch", LAUNCHER),
    ("paddle.distributed.launch", LAUNCHER),
    ("axolotl.cli.train", LAUNCHER),
    ("mlx_lm.lora", LAUNCHER),
    ("jupyterlab", INTERACTIVE),
    ("lm_eval", OFFLINE),
)
MODULE_PREFIXES = tuple(prefix for prefix, _ in MODULES)
SERVER_PROGRAM_SUFFIXES = ("server", "-serve", "_serve")
COMMAND_FIRST_WORDS = frozenset(first for first, _ in COMMANDS)

# Image signals: (anchor words, regex on the lower-cased image, class, category, weight-with-own-entrypoint, label)
IMAGE_SIGNALS: tuple[tuple[tuple[str, ...], str, WorkloadClass, str, int, str], ...] = (
    (('vllm',), r"vllm/vllm-openai|(?:^|/)vllm(?:-[\w-]+)?(?::|$)|rocm/vllm", _S, "stack-image", 8, "vLLM"),
    (('tritonserver', 'tensorrtserver', 'triton'), r"nvidia/tritonserver|/tritonserver|/tensorrtserver", _S, "stack-image", 8, "Triton"),
    (('generation', 'tgi'), r"huggingface/text-generation-inference|/tgi(?:-[\w-]+)?(?::|$)|text-generation-inference", _S, "stack-image", 8, "TGI"),
    (('embeddings',), r"huggingface/text-embeddings-inference|text-embeddings-inference", _S, "stack-image", 8, "TEI"),
    (('sglang',), r"lmsysorg/sglang|/sglang(?::|$)", _S, "stack-image", 8, "SGLang"),
    (('torchserve',), r"pytorch/torchserve|/torchserve", _S, "stack-image", 8, "TorchServe"),
    (('serving',), r"tensorflow/serving", _S, "stack-image", 8, "TensorFlow Serving"),
    (('kserve', 'kfserving'), r"(?:^|/)kserve/|kserve-container|/kfserving/", _S, "stack-image", 8, "KServe"),
    (('cpp',), r"ggerganov/llama\.cpp:\S*server|ggml-org/llama\.cpp:\S*server|llama\.cpp:server|llama-cpp-python", _S, "stack-image", 8, "llama.cpp server"),
    (('ollama',), r"ollama/ollama|(?:^|/)ollama(?::|$)", _S, "stack-image", 8, "Ollama"),
    (('nim',), r"nvcr\.io/nim/|/nim/", _S, "stack-image", 8, "NVIDIA NIM"),
    (('lmdeploy',), r"openmmlab/lmdeploy", _S, "stack-image", 8, "LMDeploy"),
    (('seldonio', 'mlserver'), r"seldonio/|/mlserver", _S, "stack-image", 8, "Seldon MLServer"),
    (('infinity',), r"michaelf34/infinity|/infinity-emb", _S, "stack-image", 8, "Infinity"),
    (('xinference',), r"xprobe/xinference", _S, "stack-image", 8, "Xinference"),
    (('lorax', 'aphrodite', 'localai', 'local', 'webui', 'riva', 'tensorrt', 'trtllm', 'bentoml', 'openllm', 'mii', 'aibrix', 'openvino', 'caikit'), r"openvino/model_server|/caikit|predibase/lorax|aphrodite|localai/localai|/local-ai|/text-generation-webui|nvidia/riva|/riva-speech|tensorrt-?llm.*(?:server|serve)|triton.*trtllm|bentoml/|/openllm|deepspeed-mii|/aibrix", _S, "stack-image", 8, "model server"),
    (('rayproject',), r"rayproject/ray-ml|rayproject/ray", _S, "ray-image", 0, "Ray"),  # a cluster, not a class by itself
    (('axolotl',), r"axolotlai/axolotl|winglian/axolotl|/axolotl", _T, "train-image", 6, "axolotl"),
    (('llamafactory', 'factory'), r"hiyouga/llamafactory|/llama-?factory", _T, "train-image", 6, "LLaMA-Factory"),
    (('horovod',), r"horovod/horovod|/horovod", _T, "train-image", 6, "Horovod"),
    (('mosaicml', 'megatron', 'torchtitan', 'rl', 'verl', 'openrlhf', 'deepspeed', 'kubeflow', 'dist', 'mpi', 'kubeflowkatib', 'mnist'), r"mosaicml/llm-foundry|mosaicml/composer|/megatron|/torchtitan|/nemo-rl|/verl|/openrlhf|/deepspeed(?::|$)|kubeflow/(?:pytorch|tf|mpi)-|pytorch-dist-|tf-dist-|/mpi-pi|kubeflowkatib/|/tf-mnist|mnist", _T, "train-image", 6, "training"),
    (('nemo',), r"nvcr\.io/nvidia/nemo:|/nemo:", _T, "train-image", 3, "NeMo"),
    (('jupyter', 'notebook', 'code', 'rstudio', 'kubeflownotebookswg'), r"jupyter/|/jupyter|notebook|kubeflownotebookswg|code-server|/rstudio", _T, "interactive", 7, "notebook"),
)

# Env vars by exact name, then by prefix: (class, weight).
ENV_NAMES: Mapping[str, tuple[WorkloadClass, int]] = {
    "MASTER_ADDR": (_T, 5), "MASTER_PORT": (_T, 5), "WORLD_SIZE": (_T, 5), "NODE_RANK": (_T, 5),
    "LOCAL_RANK": (_T, 5), "RANK": (_T, 4), "TF_CONFIG": (_T, 5), "NPROC_PER_NODE": (_T, 5),
    "NNODES": (_T, 5), "GROUP_RANK": (_T, 5), "CUDA_DEVICE_MAX_CONNECTIONS": (_T, 3),
    "WANDB_PROJECT": (_T, 3), "WANDB_API_KEY": (_T, 3), "WANDB_RUN_NAME": (_T, 3), "WANDB_ENTITY": (_T, 3),
    "MLFLOW_EXPERIMENT_NAME": (_T, 2), "TENSORBOARD_LOG_DIR": (_T, 2),
    "MODEL_ID": (_S, 3), "NUM_SHARD": (_S, 3), "MAX_INPUT_LENGTH": (_S, 4), "MAX_TOTAL_TOKENS": (_S, 4),
    "MAX_BATCH_PREFILL_TOKENS": (_S, 4), "MAX_INPUT_TOKENS": (_S, 4), "MAX_CONCURRENT_REQUESTS": (_S, 4),
    "STORAGE_URI": (_S, 4), "HF_MODEL_ID": (_S, 3), "PORT": (_S, 2), "HOST": (_S, 1), "SERVED_MODEL_NAME": (_S, 4),
    "GUNICORN_CMD_ARGS": (_S, 5), "UVICORN_PORT": (_S, 5), "K_SERVICE": (_S, 5),
    # Training scripts configured through the environment (GKE and SageMaker-style tutorials).
    **dict.fromkeys((
        "EPOCHS", "NUM_EPOCHS", "NUM_TRAIN_EPOCHS", "MAX_STEPS", "LEARNING_RATE", "LORA_R", "LORA_ALPHA",
        "TRAIN_BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS", "SM_CHANNEL_TRAINING",
    ), (_T, 4)),
}
ENV_PREFIXES: tuple[tuple[str, WorkloadClass, int], ...] = (
    ("PET_", _T, 5), ("HOROVOD_", _T, 4), ("OMPI_", _T, 3), ("ACCELERATE_", _T, 3), ("DEEPSPEED_", _T, 3),
    ("WANDB_", _T, 2), ("NCCL_", _T, 1), ("TORCH_NCCL_", _T, 1),
    ("VLLM_", _S, 3), ("OLLAMA_", _S, 5), ("NIM_", _S, 6), ("MLSERVER_", _S, 6), ("LLAMA_ARG_", _S, 6),
    ("TRITON_", _S, 3), ("TGI_", _S, 4), ("SGLANG_", _S, 2), ("KSERVE_", _S, 5), ("BENTOML_", _S, 4),
    ("TS_", _S, 1), ("SERVING_", _S, 3),
)
ENV_PREFIX_STRINGS = tuple(prefix for prefix, _, _ in ENV_PREFIXES)

# Labels and annotations that tools (not tenants) put on pod templates.
LABEL_KEY_PREFIXES: tuple[tuple[str, WorkloadClass, int], ...] = (
    ("serving.kserve.io/", _S, 6), ("serving.knative.dev/", _S, 5), ("seldon-deployment-id", _S, 6),
    ("training.kubeflow.org/", _T, 6), ("kubeflow.org/", _T, 3), ("trainer.kubeflow.org/", _T, 6),
    ("batch.kubernetes.io/job-name", _T, 2), ("job-name", _T, 2), ("volcano.sh/job-name", _T, 3),
    ("jobset.sigs.k8s.io/", _T, 3), ("notebook-name", _T, 7),
)
COMPONENT_LABELS = ("app.kubernetes.io/component", "component", "role", "app.kubernetes.io/name", "app")

# Names (scripts, modules, containers, images, label values) are read word by word, with
# set lookups and startswith on tuples: far cheaper than regexes with many alternatives.
TRAIN_WORD_PREFIXES = ("train", "pretrain", "posttrain", "finetun", "distill", "mnist", "imagenet", "cifar")
TRAIN_WORDS = frozenset({"sft", "dpo", "orpo", "kto", "ppo", "grpo", "rlhf", "lora", "qlora"})
INTERACTIVE_NAME_PARTS = ("notebook", "jupyter", "code-server", "vscode", "rstudio")
SERVE_WORDS = frozenset({"server", "serve", "serving", "predictor", "apiserver", "api", "deploy", "triton", "webui", "endpoint"})
SERVING_NAME_PARTS = ("predictor", "inference", "serving", "server")
SERVING_NAME_WORDS = frozenset({
    "serve", "api", "transformer", "vllm", "tgi", "tei", "triton", "ollama", "sglang", "chat", "embedding",
    "embeddings", "reranker", "llm", "kserve", "nim",
})
# "inference.py" alone is not here: without a port it may still be a queue worker, so its name
# decides nothing and the restart policy and ports do.
OFFLINE_WORD_PREFIXES = ("bench", "eval", "batch", "offline", "embed", "generat", "client", "score", "loadtest", "transcribe")
# "benchmark_serving" and "metrics_server" serve no model.
NOT_SERVING_WORD_PREFIXES = ("bench", "eval", "client", "loadtest", "metric", "exporter", "monitor", "tensorboard")

# Words of a command line; shell separators (; && || |) are kept as tokens of their own because
# they start a new command, whose first word is a program even after a "--flag".
TOKENS = re.compile(r"[;&|]+|[^\s'\"`;&|()]+")
MODULE_FLAGS = frozenset({"-m", "--module"})

# Command-line flags, compared after stripping dashes and writing "_" as "-".
FLAG_SIGNALS: Mapping[str, tuple[WorkloadClass, str, int]] = {
    **{flag: (_T, "train-args", 6) for flag in (
        "num-train-epochs", "epoch", "epochs", "num-epochs", "max-epochs", "train-epochs", "max-steps", "max-train-steps",
        "num-train-steps", "train-steps", "total-steps", "num-iterations", "train-iters", "train-samples", "do-train",
        "gradient-accumulation-steps", "per-device-train-batch-size", "train-batch-size", "micro-batch-size",
        "global-batch-size", "learning-rate", "lr-decay-style", "lr-scheduler-type", "lr-warmup-iters", "warmup-steps",
        "warmup-ratio", "save-steps", "save-interval", "train-file", "train-data", "train-data-path", "lora-r",
        "lora-alpha", "lora-rank", "lora-dropout", "deepspeed", "deepspeed-config", "fsdp", "zero-stage",
        "gradient-checkpointing", "max-grad-norm", "clip-grad", "weight-decay", "adam-beta1", "adam-beta2",
    )},
    **{flag: (_T, "train-hints", 3) for flag in (
        # Not --seed, --bf16 or --fp16: servers and inference scripts take them just as often.
        "lr", "output-dir", "model-name-or-path", "pretrained-model-name-or-path", "checkpoint-dir", "save-dir",
        "save-path", "resume-from-checkpoint", "dataset-name", "data-path", "report-to", "logging-steps",
    )},
    **{flag: (_S, "serve-args", 4) for flag in (
        "max-model-len", "gpu-memory-utilization", "served-model-name", "max-num-seqs", "max-num-batched-tokens",
        "enable-prefix-caching", "max-batch-prefill-tokens", "max-batch-total-tokens", "max-total-tokens",
        "max-input-length", "max-input-tokens", "max-concurrent-requests", "model-repository", "model-store",
        "ts-config", "http-port", "grpc-port", "model-id", "chat-template", "enable-lora", "lora-modules", "api-key",
        "api-keys", "max-running-requests", "mem-fraction-static", "max-waiting-requests", "num-shard", "rest-api-port",
        "model-base-path", "model-config-file", "tensor-parallel-size", "pipeline-parallel-size", "kv-cache-dtype",
        "enforce-eager", "disable-log-requests", "speculative-model", "swap-space", "n-gpu-layers", "ngl", "ctx-size",
        "cont-batching", "cuda-graph-max-bs", "quantize", "server-port", "model-control-mode", "max-lora-rank",
    )},
    **{flag: (_S, "listen", 2) for flag in ("port", "listen")},
}
LISTEN_FLAGS = frozenset({"host", "bind", "b", "bind-addr", "ip"})
ANY_ADDRESS = re.compile(r"^(?:0\.0\.0\.0|::|\[::\]|\$)")
# key=value arguments (Hydra, Ultralytics, verl) that say the run has epochs or steps.
TRAIN_KEYS = frozenset({"epochs", "max_epochs", "num_epochs", "total_epochs", "max_steps", "train_iters", "max_duration"})
TRAIN_KEY_PREFIXES = ("trainer.", "training.", "model.optim.", "optim.")
HF_EXAMPLE_STEM = re.compile(r"^run_(?:clm|mlm|glue|ner|qa|seq2seq|summarization|translation|swag|speech_recognition\w*|image_classification|mae|classification|plm|xnli)")
SCRIPT_SUFFIXES = (".py", ".sh")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
TRAIN_SUBCOMMANDS = frozenset({"train", "finetune", "fine-tune", "pretrain", "sft", "dpo", "fit"})
# "<tool> serve" is how most serving CLIs start (mlflow models serve, ollama serve, ...).
SERVE_SUBCOMMANDS = frozenset({"serve", "start_server", "start-server", "serve-http", "serve-grpc"})
NOT_A_SERVING_TOOL = frozenset({"bench", "import", "from"})  # "vllm bench serve", "from ray import serve"

# Ports that training jobs or side tools open; a probe on them says nothing about serving.
TRAINING_PORTS = frozenset({29500, 23456, 2222, 29400, 12355, 22})
TRAINING_PORT_NAMES = ("pytorchjob", "tfjob", "mpijob", "master", "rdzv", "ssh", "nccl", "gloo", "dist")
# Metrics, dashboards, notebooks and Ray's cluster plumbing (GCS, client, dashboard, agents).
SIDE_PORTS = frozenset({6006, 9090, 9091, 9100, 9400, 8888, 8787, 6379, 6380, 8265, 10001, 8076, 8077, 8078, 52365})
SIDE_PORT_NAMES = ("metric", "prom", "tensorboard", "dashboard", "monitor", "debug", "profil", "gcs", "redis", "notebook", "jupyter")
KUBEFLOW_CONTAINER_NAMES = frozenset({"pytorch", "tensorflow", "xgboost", "paddle", "jax", "mxnet"})
SIDECAR_NAME_PARTS = (
    "istio", "envoy", "queue-proxy", "oauth-proxy", "oauth2-proxy", "fluent", "vector", "promtail", "cloud-sql-proxy",
    "dcgm", "node-exporter", "tensorboard", "linkerd", "datadog", "otel", "jaeger", "gcsfuse", "git-sync",
)

# An image regex runs only when one of its anchor words is among the image's words, so
# most images cost one split and a few dict lookups; the first listed signal that matches wins.
IMAGE_RE: tuple[tuple[re.Pattern[str], tuple[WorkloadClass, str, int, str]], ...] = tuple(
    (re.compile(pattern), (workload_class, category, weight, stack))
    for _, pattern, workload_class, category, weight, stack in IMAGE_SIGNALS
)


def _image_signals_by_word() -> dict[str, tuple[int, ...]]:
    by_word: dict[str, list[int]] = {}
    for index, (anchor_words, *_) in enumerate(IMAGE_SIGNALS):
        for word in anchor_words:
            by_word.setdefault(word, []).append(index)
    return {word: tuple(indexes) for word, indexes in by_word.items()}


IMAGE_SIGNALS_BY_WORD = _image_signals_by_word()
