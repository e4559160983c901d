"""The pure core: model, policy, classifier, inventory and engine.

Nothing under this package touches the network, the disk or the clock, and it
imports only the standard library (no sockets, HTTP, processes, threads or event
loops) and itself: `make lint`'s stdlib_only import contract (pyproject.toml)
enforces the imports.
"""
