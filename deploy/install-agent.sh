#!/usr/bin/env bash
# Installs (or upgrades) sigma-agent on a Debian or Ubuntu VPS: the binary, its settings in
# /etc/sigma-agent/agent.env, the systemd unit, and with --istio what mesh mode needs (the
# istio-proxy user, Istio's directories, the unit's mesh drop-in, optionally pilot-agent and
# Envoy from Istio's sidecar archive). Idempotent: running it again with the same arguments
# changes nothing; with a new binary it upgrades and restarts the agent; settings not given
# again are kept.
#
# Run it as root from a copy of this repository's deploy/ directory (it installs the unit
# files next to it):
#
#   ./install-agent.sh --binary ./sigma-agent --api-url https://sigma.example.net \
#       --enrollment-token-file ./token          # first install: a token from `sigmactl enroll create`
#   ./install-agent.sh --binary ./sigma-agent     # upgrade: new binary, settings kept
#   ./install-agent.sh --istio --istio-proxy-archive https://…/istio-sidecar.tar.gz \
#       --istio-proxy-sha256 <hex>               # switch this VPS to mesh mode
#   ./install-agent.sh --no-istio                 # back to classic mode
#
# Options:
#   --binary PATH|URL          sigma-agent binary to install (URL: fetched with curl)
#   --sha256 HEX               expected SHA-256 of --binary (refused on mismatch)
#   --api-url URL              sigma-api's URL (SIGMA_API_URL)
#   --enrollment-token TOKEN   enrollment token for the first contact (stored in a 0600 file)
#   --enrollment-token-file F  the same, read from a file
#   --metrics-token-file F     token the agent's /metrics requires (copied, 0600)
#   --hostname NAME            this VPS's hostname in sigma (AGENT_HOSTNAME; default: detected)
#   --istio / --no-istio       mesh mode on / off (default: as it is)
#   --istio-proxy-archive PATH|URL, --istio-proxy-sha256 HEX
#                              install pilot-agent and Envoy from Istio's istio-sidecar.tar.gz
#                              (both needed together); without them the agent fetches the
#                              archive sigma-api's bootstrap bundle names
#   --root DIR                 install below DIR instead of / (tests; no user switch to
#                              systemd, no service start)
#   --no-start                 install only; do not enable or (re)start the service
set -euo pipefail

die() { echo "install-agent: $*" >&2; exit 1; }
log() { echo "install-agent: $*"; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=/
BINARY="" BINARY_SHA256="" API_URL="" TOKEN="" TOKEN_FILE="" METRICS_TOKEN_FILE="" HOSTNAME_SET=""
ISTIO="" PROXY_ARCHIVE="" PROXY_SHA256="" START=1

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY="${2:?}"; shift 2 ;;
    --sha256) BINARY_SHA256="${2:?}"; shift 2 ;;
    --api-url) API_URL="${2:?}"; shift 2 ;;
    --enrollment-token) TOKEN="${2:?}"; shift 2 ;;
    --enrollment-token-file) TOKEN_FILE="${2:?}"; shift 2 ;;
    --metrics-token-file) METRICS_TOKEN_FILE="${2:?}"; shift 2 ;;
    --hostname) HOSTNAME_SET="${2:?}"; shift 2 ;;
    --istio) ISTIO=on; shift ;;
    --no-istio) ISTIO=off; shift ;;
    --istio-proxy-archive) PROXY_ARCHIVE="${2:?}"; shift 2 ;;
    --istio-proxy-sha256) PROXY_SHA256="${2:?}"; shift 2 ;;
    --root) ROOT="${2:?}"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
done

ROOT="${ROOT%/}"
[ -n "$ROOT" ] || ROOT=""
if [ -z "$ROOT" ]; then
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -f /etc/debian_version ] || log "warning: not Debian or Ubuntu; continuing"
else
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  START=0
fi
[ -n "$TOKEN" ] && [ -n "$TOKEN_FILE" ] && die "--enrollment-token and --enrollment-token-file exclude each other"
if [ -n "$PROXY_ARCHIVE" ] || [ -n "$PROXY_SHA256" ]; then
  [ -n "$PROXY_ARCHIVE" ] && [ -n "$PROXY_SHA256" ] || die "--istio-proxy-archive needs --istio-proxy-sha256 (and the other way round)"
  [ "$ISTIO" = off ] && die "--istio-proxy-archive with --no-istio"
  ISTIO=on
fi
for h in "$BINARY_SHA256" "$PROXY_SHA256"; do
  [ -z "$h" ] || [[ "$h" =~ ^[0-9a-f]{64}$ ]] || die "SHA-256 must be 64 lower-case hex digits: $h"
done
[ -z "$BINARY_SHA256" ] || [ -n "$BINARY" ] || die "--sha256 without --binary"

ENV_DIR="$ROOT/etc/sigma-agent"
ENV_FILE="$ENV_DIR/agent.env"
UNIT_DIR="$ROOT/etc/systemd/system"
DROPIN_DIR="$UNIT_DIR/sigma-agent.service.d"
BIN="$ROOT/usr/local/bin/sigma-agent"
changed=0   # something the running agent must be restarted for

work="$(mktemp -d "${TMPDIR:-/tmp}/install-agent.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# fetch SRC DEST: a local file or an http(s) URL to DEST.
fetch() {
  case "$1" in
    http://*|https://*) curl -fsSL --retry 3 -o "$2" "$1" || die "cannot download $1" ;;
    *) [ -f "$1" ] || die "$1 does not exist"; cp "$1" "$2" ;;
  esac
}

# verify FILE HEX
verify() {
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got" = "$2" ] || die "SHA-256 mismatch for $3: expected $2, got $got"
}

# put SRC DEST MODE: installs SRC as DEST atomically (temporary file + rename) unless DEST
# already has the same content and mode; sets changed=1 when it wrote.
put() {
  local src="$1" dest="$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.install-tmp"
  mv -f "$dest.install-tmp" "$dest"
  changed=1
  log "installed ${dest#"$ROOT"}"
}

# Everything is fetched, checked and staged in $work first; nothing is written before all of it
# holds, so a refused run leaves the VPS as it was.

# --- the binary ----------------------------------------------------------------------------
if [ -n "$BINARY" ]; then
  fetch "$BINARY" "$work/sigma-agent"
  [ -z "$BINARY_SHA256" ] || verify "$work/sigma-agent" "$BINARY_SHA256" "$BINARY"
elif [ ! -x "$BIN" ]; then
  die "sigma-agent is not installed yet: give --binary"
fi

# --- settings --------------------------------------------------------------------------------
# agent.env keeps every line it has; the options given replace their variables.
touch "$work/agent.env"
[ ! -f "$ENV_FILE" ] || cp "$ENV_FILE" "$work/agent.env"
# setenv NAME VALUE (empty VALUE: remove)
setenv() {
  grep -v "^$1=" "$work/agent.env" >"$work/agent.env.new" || true
  [ -z "$2" ] || printf '%s=%s\n' "$1" "$2" >>"$work/agent.env.new"
  mv "$work/agent.env.new" "$work/agent.env"
}
getenv() { sed -n "s/^$1=//p" "$work/agent.env" | tail -n 1; }

if [ -n "$API_URL" ]; then
  [[ "$API_URL" =~ ^https?://[^[:space:]]+$ ]] || die "--api-url must be an http(s) URL"
  setenv SIGMA_API_URL "$API_URL"
fi
[ -n "$(getenv SIGMA_API_URL)" ] || die "no sigma-api URL yet: give --api-url"
[ -z "$HOSTNAME_SET" ] || setenv AGENT_HOSTNAME "$HOSTNAME_SET"

if [ -n "$TOKEN" ] || [ -n "$TOKEN_FILE" ]; then
  if [ -n "$TOKEN_FILE" ]; then
    [ -f "$TOKEN_FILE" ] || die "$TOKEN_FILE does not exist"
    tr -d '\r\n' <"$TOKEN_FILE" >"$work/token"
  else
    printf '%s' "$TOKEN" >"$work/token"
  fi
  [ -s "$work/token" ] || die "the enrollment token is empty"
  setenv SIGMA_ENROLLMENT_TOKEN_FILE /etc/sigma-agent/enrollment-token
fi
if [ -n "$METRICS_TOKEN_FILE" ]; then
  [ -f "$METRICS_TOKEN_FILE" ] || die "$METRICS_TOKEN_FILE does not exist"
  cp "$METRICS_TOKEN_FILE" "$work/metrics-token"
  setenv AGENT_METRICS_TOKEN_FILE /etc/sigma-agent/metrics-token
fi
for f in sigma-agent.service sigma-agent.service.d/istio.conf sigma-agent.service.d/istio-proxy-download.conf; do
  [ -f "$HERE/$f" ] || die "$HERE/$f missing: run this from a copy of deploy/"
done
if [ -n "$PROXY_ARCHIVE" ]; then
  fetch "$PROXY_ARCHIVE" "$work/istio-sidecar.tar.gz"
  verify "$work/istio-sidecar.tar.gz" "$PROXY_SHA256" "$PROXY_ARCHIVE"
  mkdir -p "$work/sidecar"
  tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
    ./usr/local/bin/pilot-agent ./usr/local/bin/envoy 2>/dev/null ||
    tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
      usr/local/bin/pilot-agent usr/local/bin/envoy 2>/dev/null ||
    die "$PROXY_ARCHIVE has no usr/local/bin/pilot-agent and usr/local/bin/envoy (is it Istio's istio-sidecar.tar.gz?)"
  tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
    ./var/lib/istio/envoy/envoy_bootstrap_tmpl.json 2>/dev/null ||
    tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
      var/lib/istio/envoy/envoy_bootstrap_tmpl.json 2>/dev/null || true
fi

# --- write -----------------------------------------------------------------------------------
[ ! -f "$work/sigma-agent" ] || put "$work/sigma-agent" "$BIN" 0755
mkdir -p "$ENV_DIR"
chmod 0700 "$ENV_DIR"
[ ! -f "$work/token" ] || put "$work/token" "$ENV_DIR/enrollment-token" 0600
[ ! -f "$work/metrics-token" ] || put "$work/metrics-token" "$ENV_DIR/metrics-token" 0600
put "$work/agent.env" "$ENV_FILE" 0600
put "$HERE/sigma-agent.service" "$UNIT_DIR/sigma-agent.service" 0644

# --- mesh mode -------------------------------------------------------------------------------
if [ "$ISTIO" = on ]; then
  if [ -z "$ROOT" ]; then
    getent group istio-proxy >/dev/null || groupadd --system istio-proxy
    getent passwd istio-proxy >/dev/null || useradd --system --gid istio-proxy --home-dir /var/lib/istio \
      --no-create-home --shell /usr/sbin/nologin --comment "Istio proxy (sigma-agent mesh mode)" istio-proxy
  else
    # A test root: Debian's useradd --root needs a complete system there; write the entries.
    mkdir -p "$ROOT/etc"
    touch "$ROOT/etc/passwd" "$ROOT/etc/group"
    grep -q '^istio-proxy:' "$ROOT/etc/group" || echo "istio-proxy:x:1337:" >>"$ROOT/etc/group"
    grep -q '^istio-proxy:' "$ROOT/etc/passwd" ||
      echo "istio-proxy:x:1337:1337:Istio proxy (sigma-agent mesh mode):/var/lib/istio:/usr/sbin/nologin" >>"$ROOT/etc/passwd"
  fi
  owner="istio-proxy:istio-proxy"
  # Istio's VM layout; the unit's drop-in makes exactly these writable.
  for d in etc/certs etc/istio etc/istio/config etc/istio/proxy var/lib/istio var/lib/istio/envoy; do
    if [ ! -d "$ROOT/$d" ]; then
      mkdir -p "$ROOT/$d"
      log "created /$d"
    fi
    if [ -z "$ROOT" ]; then chown "$owner" "/$d"; fi
  done
  touch "$ROOT/etc/hosts"
  put "$HERE/sigma-agent.service.d/istio.conf" "$DROPIN_DIR/istio.conf" 0644
  if [ -n "$PROXY_ARCHIVE" ]; then
    put "$work/sidecar/usr/local/bin/pilot-agent" "$ROOT/usr/local/bin/pilot-agent" 0755
    put "$work/sidecar/usr/local/bin/envoy" "$ROOT/usr/local/bin/envoy" 0755
    if [ -f "$work/sidecar/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" ]; then
      put "$work/sidecar/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" \
        "$ROOT/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" 0644
    else
      log "warning: the archive has no var/lib/istio/envoy/envoy_bootstrap_tmpl.json (pilot-agent needs it)"
    fi
    if [ -f "$DROPIN_DIR/istio-proxy-download.conf" ]; then
      rm -f "$DROPIN_DIR/istio-proxy-download.conf"
      changed=1
      log "removed /etc/systemd/system/sigma-agent.service.d/istio-proxy-download.conf"
    fi
  elif [ -x "$ROOT/usr/local/bin/pilot-agent" ] && [ -x "$ROOT/usr/local/bin/envoy" ]; then
    :  # installed before; keep it
  else
    put "$HERE/sigma-agent.service.d/istio-proxy-download.conf" "$DROPIN_DIR/istio-proxy-download.conf" 0644
  fi
elif [ "$ISTIO" = off ]; then
  for f in istio.conf istio-proxy-download.conf; do
    if [ -f "$DROPIN_DIR/$f" ]; then
      rm -f "$DROPIN_DIR/$f"
      changed=1
      log "removed /etc/systemd/system/sigma-agent.service.d/$f"
    fi
  done
  rmdir "$DROPIN_DIR" 2>/dev/null || true
  if [ "$changed" = 1 ] && [ "$START" = 1 ] && systemctl is-active --quiet sigma-agent.service; then
    # Stop the mesh-mode agent first, so it cannot put the hosts block back meanwhile; it
    # starts again in classic mode below.
    systemctl stop sigma-agent.service
  fi
  # pilot-agent and Envoy stop with the agent (they run in the unit's cgroup). What the
  # agent installed from its bundle goes now: the hosts block (it points mesh services at
  # loopback listeners that no longer exist), the token and the workload key. The istio-proxy
  # user, Istio's directories and the proxy binaries stay for a later --istio.
  if [ -f "$ROOT/etc/hosts" ] && grep -q '^# BEGIN sigma-istio$' "$ROOT/etc/hosts"; then
    sed '/^# BEGIN sigma-istio$/,/^# END sigma-istio$/d' "$ROOT/etc/hosts" >"$work/hosts"
    cat "$work/hosts" >"$ROOT/etc/hosts"   # in place: /etc/hosts may be a bind mount
    changed=1
    log "removed the sigma-istio block from /etc/hosts"
  fi
  for f in var/run/secrets/tokens/istio-token etc/certs/key.pem etc/certs/cert-chain.pem \
    etc/certs/root-cert.pem var/lib/istio/envoy/cluster.env etc/istio/config/mesh; do
    if [ -e "$ROOT/$f" ] || [ -L "$ROOT/$f" ]; then
      rm -f "$ROOT/$f"
      log "removed /$f"
    fi
  done
  if [ -z "$ROOT" ] && [ -x /usr/local/bin/pilot-agent ]; then
    # Interception rules of the opt-in iptables mode, if any (a no-op otherwise).
    /usr/local/bin/pilot-agent istio-iptables --cleanup-only >/dev/null 2>&1 || true
  fi
fi

# --- start -----------------------------------------------------------------------------------
if [ "$START" = 1 ]; then
  systemctl daemon-reload
  systemctl enable sigma-agent.service >/dev/null
  if ! systemctl is-active --quiet sigma-agent.service; then
    systemctl start sigma-agent.service
    log "started sigma-agent"
  elif [ "$changed" = 1 ]; then
    systemctl restart sigma-agent.service
    log "restarted sigma-agent"
  fi
  log "status: systemctl status sigma-agent; logs: journalctl -u sigma-agent"
fi
if [ "$changed" = 0 ]; then log "nothing changed"; fi
