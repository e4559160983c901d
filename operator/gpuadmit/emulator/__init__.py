"""The emulated Kubernetes API server used by the tests and `gpuadmit demo` (built on kmock).

See docs/emulator.md. Start it with ``python -m gpuadmit.emulator --port N``, or in tests::

    with EmulatedApiServer(crds=["crds"]) as url:        # own thread: any client works
        ...
    async with EmulatedApiServer(crds=["crds"]) as url:  # current loop: async clients only
        ...
"""

from gpuadmit.emulator.errors import ApiError
from gpuadmit.emulator.faults import FaultPlan
from gpuadmit.emulator.handler import KubernetesApiEmulator
from gpuadmit.emulator.server import EmulatedApiServer, write_kubeconfig

__all__ = ["ApiError", "EmulatedApiServer", "FaultPlan", "KubernetesApiEmulator", "write_kubeconfig"]
