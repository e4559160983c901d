"""The pure core: model, policy, classifier, inventory and engine.

Nothing under this package may import kopf, kubernetes, aiohttp or
prometheus_client, or touch the network, the disk or the clock; a test
(tests/core/test_purity.py) enforces it.
"""
