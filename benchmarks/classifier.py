"""`make bench` part: the classifier's accuracy on the labelled corpus, and its cost per call.

The corpus is ``tests/data/manifests/*.yaml`` (each document: name, source, expected class,
template; docs/classifier.md). Printed: correct / total per file and overall, every miss with the
classifier's reason, and the CPU per ``classify`` call over the whole corpus.
``tests/core/test_classifier.py`` asserts a floor on the same corpus (``load_corpus``).

    python -m benchmarks.classifier
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from gpuadmit.core.classifier import classify

CORPUS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "manifests"
TIMING_ROUNDS = 20


def load_corpus(directory: Path = CORPUS_DIR) -> list[dict[str, Any]]:
    """Every labelled document of the corpus, with the name of its file under ``file``."""
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append({**document, "file": path.name})
    return documents


def misses(corpus: list[dict[str, Any]]) -> list[str]:
    """``file:name: got CLASS (reason)`` for every document the classifier labels otherwise."""
    found = []
    for document in corpus:
        workload_class, reason = classify("auto", document["template"])
        if workload_class != document["expected"]:
            found.append(f"{document['file']}:{document['name']}: got {workload_class} ({reason})")
    return found


def main(argv: list[str] | None = None) -> int:
    """Print accuracy per file and overall, the misses and the cost per call."""
    argparse.ArgumentParser(prog="python -m benchmarks.classifier", description=__doc__.split("\n")[0]).parse_args(argv if argv is not None else [])  # --help; no sizes to choose
    corpus = load_corpus()
    missed = misses(corpus)
    per_file = Counter(document["file"] for document in corpus)
    missed_per_file = Counter(miss.split(":", 1)[0] for miss in missed)
    print(f"labelled corpus: {len(corpus)} pod templates in {CORPUS_DIR.relative_to(CORPUS_DIR.parents[2])}")
    for name, count in sorted(per_file.items()):
        print(f"  {name:<28} {count - missed_per_file[name]:>4} / {count}")
    print(f"correct: {len(corpus) - len(missed)} / {len(corpus)} ({1 - len(missed) / len(corpus):.1%})")
    for miss in missed:
        print(f"  miss: {miss}")
    started = time.process_time()
    for _ in range(TIMING_ROUNDS):
        for document in corpus:
            classify("auto", document["template"])
    per_call = (time.process_time() - started) / (TIMING_ROUNDS * len(corpus))
    print(f"CPU per classify() call over the corpus ({TIMING_ROUNDS} rounds): {per_call * 1e6:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
