"""kubelet device plugin, feature discovery and CDI for OpenXPU."""
