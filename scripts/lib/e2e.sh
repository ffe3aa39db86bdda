# Shared settings of the end-to-end scripts in scripts/e2e (sourced, not run).
# Sets E2E_ROOT (the repo root) and the versions and cache paths of the real components.

E2E_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Outside the checkout, so every clone on one machine (CI clones afresh each run) shares the
# binaries; keyed by component and version below. Never committed.
E2E_BIN_CACHE="${E2E_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma/e2e-bin}"

# etcd of the same minor as the etcd client and server modules Kubernetes 1.35.4 requires.
E2E_ETCD_VERSION=v3.6.5
E2E_K8S_VERSION=v1.35.4
# Istio 1.30: the Go module proxy refuses the 1.30.3 tag commit (56df41f63e51), so this is the
# newest served release-1.30 commit (VERSION file 1.30, 2026-08-26), whose
# manifests/charts/base/files/crd-all.gen.yaml is byte-identical to ../shared/istio/crd-all.gen.yaml (1.30.3).
E2E_ISTIO_VERSION=v0.0.0-20260826214018-9739e10eb9d7
# The proxy also refuses the pseudo-versions that commit's go.mod requires of these modules
# (403 "This module version is not available"); the wrapper module replaces each with the nearest
# served version: the 1.30 patch tags of Istio's API modules and go-control-plane/agentgateway
# commits a few days away from the required ones.
E2E_ISTIO_DEP_OVERRIDES=(
  istio.io/api=istio.io/api@v1.30.8                         # wanted v1.30.4-0.20260824163423-69099aec2678
  istio.io/client-go=istio.io/client-go@v1.30.8             # wanted v1.30.4-0.20260824164123-eb36a3f6cac0
  github.com/envoyproxy/go-control-plane/envoy=github.com/envoyproxy/go-control-plane/envoy@v1.37.1-0.20260418153000-ae8637bdda9d     # wanted ...-20260409083702-98966259b99a
  github.com/envoyproxy/go-control-plane/contrib=github.com/envoyproxy/go-control-plane/contrib@v1.36.1-0.20260713214202-ca8ce173c36f # wanted ...-20260409083702-98966259b99a
  github.com/agentgateway/agentgateway/api=github.com/agentgateway/agentgateway/api@v0.0.0-20260501213430-773586679f1c                 # wanted ...-20260506232448-6ae4ab07bb06
)

# e2e_bin COMPONENT: the path of a component's cached binary.
e2e_bin() {
  case "$1" in
    etcd) echo "$E2E_BIN_CACHE/etcd-$E2E_ETCD_VERSION/etcd" ;;
    kube-apiserver) echo "$E2E_BIN_CACHE/kube-apiserver-$E2E_K8S_VERSION/kube-apiserver" ;;
    pilot-discovery) echo "$E2E_BIN_CACHE/pilot-discovery-$E2E_ISTIO_VERSION/pilot-discovery" ;;
    pilot-agent) echo "$E2E_BIN_CACHE/pilot-agent-$E2E_ISTIO_VERSION/pilot-agent" ;;
    istioctl) echo "$E2E_BIN_CACHE/istioctl-$E2E_ISTIO_VERSION/istioctl" ;;
    *) echo "unknown component $1" >&2; return 1 ;;
  esac
}
