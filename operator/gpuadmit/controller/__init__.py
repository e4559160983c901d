"""The operator (`gpuadmit run`): watch streams feed a cache, a scheduling loop
runs the pure engine over it, and a writer applies the decisions to the API.

Module map, in the direction data flows: ``watch`` (list+watch streams) ->
``cache`` (raw objects) -> ``loop`` (cycle: snapshot, decide) -> ``writer``
(status, pods, Events, labels) through ``api`` (a small async REST client).
``status`` and ``gpuadmit.core.pods`` are the pure builders the writer uses;
``restore`` says what is listed and watched; ``peering`` tells the loop whether
this replica may decide; ``runtime`` assembles the parts; ``handlers`` holds the
kopf decorators (log-in, start-up, clean-up); ``main`` wires it all to the CLI.
``webhooks`` (admission) is documented in docs/webhooks.md. See docs/operator.md.
"""
