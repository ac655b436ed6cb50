"""The OpenXPU operator: one XPUClusterPolicy describes the stack; its operands are rendered
from templates (data, in `manifests/`) and applied in order."""

__version__ = "0.1.0"
