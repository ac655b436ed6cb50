#!/usr/bin/env bash
# Regenerate the kubelet PodResources v1 gRPC stubs (committed; run after updating api.proto).
# The proto is copied under its package path so the generated modules import each other as
# `openxpu_exporter.podresourcesapi.api_pb2`, not as a top-level module.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/src/openxpu_exporter/podresourcesapi"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/openxpu_exporter/podresourcesapi"
cp "$out/api.proto" "$tmp/openxpu_exporter/podresourcesapi/api.proto"
cd "$here/.."
uv run --no-sync python -m grpc_tools.protoc -I "$tmp" \
  --python_out="$here/src" --grpc_python_out="$here/src" \
  --mypy_out="$here/src" --mypy_grpc_out="$here/src" \
  "$tmp/openxpu_exporter/podresourcesapi/api.proto"
