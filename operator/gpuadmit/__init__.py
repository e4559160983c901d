"""gpuadmit: admit, queue or reject GPU workloads by the margin each GPU-hour earns."""

__version__ = "0.1.0"
