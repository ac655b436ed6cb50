"""Local image builds: pause, busybox, and the OpenXPU image from its Dockerfile."""
