"""openxpu-exporter: Prometheus metrics of OpenXPU devices, attributed to the pods holding them."""

__version__ = "0.1.0"
