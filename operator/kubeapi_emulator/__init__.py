"""The emulated Kubernetes API server used by the tests and `gpuadmit demo` (built on kmock).

See docs/emulator.md. Start it with ``python -m kubeapi_emulator --port N``, or in tests::

    with EmulatedApiServer(crds=["crds"]) as url:        # own thread: any client works
        ...
    async with EmulatedApiServer(crds=["crds"]) as url:  # current loop: async clients only
        ...
"""

from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.faults import FaultPlan
from kubeapi_emulator.handler import KubernetesApiEmulator
from kubeapi_emulator.server import EmulatedApiServer, write_kubeconfig

__all__ = ["ApiError", "EmulatedApiServer", "FaultPlan", "KubernetesApiEmulator", "write_kubeconfig"]
