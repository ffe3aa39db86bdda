# Shared settings of the end-to-end scripts in scripts/e2e (sourced, not run).
# Sets E2E_ROOT (the repo root) and the versions and cache paths of the real components.

E2E_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_BIN_CACHE="${E2E_BIN_CACHE:-$E2E_ROOT/.cache/e2e-bin}"

# etcd of the same minor as the etcd client and server modules Kubernetes 1.35.4 requires.
E2E_ETCD_VERSION=v3.6.5
E2E_K8S_VERSION=v1.35.4
# Istio 1.30: the Go module proxy refuses the 1.30.3 tag commit (56df41f63e51), so this is the
# newest served release-1.30 commit (VERSION file 1.30, 2026-08-26), whose
# manifests/charts/base/files/crd-all.gen.yaml is byte-identical to ../shared/istio/crd-all.gen.yaml (1.30.3).
E2E_ISTIO_VERSION=v0.0.0-20260826214018-9739e10eb9d7

# e2e_bin COMPONENT: the path of a component's cached binary.
e2e_bin() {
  case "$1" in
    etcd) echo "$E2E_BIN_CACHE/etcd-$E2E_ETCD_VERSION/etcd" ;;
    kube-apiserver) echo "$E2E_BIN_CACHE/kube-apiserver-$E2E_K8S_VERSION/kube-apiserver" ;;
    pilot-discovery) echo "$E2E_BIN_CACHE/pilot-discovery-$E2E_ISTIO_VERSION/pilot-discovery" ;;
    pilot-agent) echo "$E2E_BIN_CACHE/pilot-agent-$E2E_ISTIO_VERSION/pilot-agent" ;;
    *) echo "unknown component $1" >&2; return 1 ;;
  esac
}
