"""The emulated XPU: device model, node daemon, management CLI and workload client."""

__version__ = "0.1.0"
