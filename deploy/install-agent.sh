#!/bin/sh
# Installs (or upgrades) sigma-agent on a Debian or Ubuntu VPS: the binary, its settings in
# /etc/sigma-agent/agent.env, the systemd unit, and with --istio what mesh mode needs (the
# istio-proxy user, Istio's directories, the unit's mesh drop-in, optionally pilot-agent and
# Envoy from Istio's sidecar archive). Idempotent: running it again with the same arguments
# changes nothing; with a new binary it upgrades and restarts the agent; settings not given
# again are kept. Nothing is written unless every input checks out.
#
# POSIX sh and self-contained (the unit files are inside), so it also runs piped, the way
# `sigmactl enroll create` prints it:
#   curl -fsSL <api>/install.sh | SIGMA_API_URL=<api> SIGMA_ENROLLMENT_TOKEN=<token> sh
# As a file, run as root:
#   sh install-agent.sh --binary ./sigma-agent --api-url https://sigma.example.net \
#       --enrollment-token-file ./token      # first install, token from `sigmactl enroll create`
#   sh install-agent.sh --binary ./sigma-agent   # upgrade: new binary, settings kept
#   sh install-agent.sh --istio --istio-proxy-archive https://…/istio-sidecar.tar.gz \
#       --istio-proxy-sha256 <hex>            # switch this VPS to mesh mode
#   sh install-agent.sh --no-istio             # back to classic mode
#
# Options (environment variable in brackets):
#   --binary PATH|URL          sigma-agent binary to install [SIGMA_AGENT_BINARY]
#   --sha256 HEX               its expected SHA-256; refused on mismatch [SIGMA_AGENT_SHA256]
#   --api-url URL              sigma-api's URL as this VPS reaches it [SIGMA_API_URL]
#   --enrollment-token TOKEN   enrollment token for the first contact [SIGMA_ENROLLMENT_TOKEN]
#   --enrollment-token-file F  the same, read from a file
#   --metrics-token-file F     token the agent's /metrics requires (copied, 0600)
#   --hostname NAME            this VPS's hostname in sigma (AGENT_HOSTNAME; default: detected)
#   --istio / --no-istio       mesh mode on / off (default: as it is) [SIGMA_AGENT_ISTIO=1|0]
#   --istio-proxy-archive PATH|URL, --istio-proxy-sha256 HEX
#                              install pilot-agent and Envoy from Istio's istio-sidecar.tar.gz
#                              (both together); without them the agent fetches the archive
#                              sigma-api's bootstrap bundle names
#   --root DIR                 install below DIR instead of / (tests: no user database,
#                              no systemctl)
#   --no-start                 install only; do not enable or (re)start the service
set -eu

# Whoever serves this script (e.g. at <api>/install.sh) may set a download URL of the agent
# binary here, used when neither --binary nor SIGMA_AGENT_BINARY is given.
DEFAULT_BINARY_URL=""
# Filled in by sigma-api when it serves this script (GET /install.sh): its own URL, used only
# when neither --api-url nor SIGMA_API_URL is given and agent.env holds no URL yet, so a
# re-run never replaces a URL chosen earlier with a guess.
DEFAULT_API_URL=""

die() { echo "install-agent: $*" >&2; exit 1; }
log() { echo "install-agent: $*"; }

ROOT=""
BINARY="${SIGMA_AGENT_BINARY:-}"
BINARY_SHA256="${SIGMA_AGENT_SHA256:-}"
API_URL="${SIGMA_API_URL:-}"
TOKEN="${SIGMA_ENROLLMENT_TOKEN:-}"
TOKEN_FILE="" METRICS_TOKEN_FILE="" HOSTNAME_SET="" PROXY_ARCHIVE="" PROXY_SHA256="" START=1
case "${SIGMA_AGENT_ISTIO:-}" in
  1|true|yes) ISTIO=on ;;
  0|false|no) ISTIO=off ;;
  *) ISTIO="" ;;
esac

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) need "$@"; BINARY="$2"; shift 2 ;;
    --sha256) need "$@"; BINARY_SHA256="$2"; shift 2 ;;
    --api-url) need "$@"; API_URL="$2"; shift 2 ;;
    --enrollment-token) need "$@"; TOKEN="$2"; shift 2 ;;
    --enrollment-token-file) need "$@"; TOKEN_FILE="$2"; shift 2 ;;
    --metrics-token-file) need "$@"; METRICS_TOKEN_FILE="$2"; shift 2 ;;
    --hostname) need "$@"; HOSTNAME_SET="$2"; shift 2 ;;
    --istio) ISTIO=on; shift ;;
    --no-istio) ISTIO=off; shift ;;
    --istio-proxy-archive) need "$@"; PROXY_ARCHIVE="$2"; shift 2 ;;
    --istio-proxy-sha256) need "$@"; PROXY_SHA256="$2"; shift 2 ;;
    --root) need "$@"; ROOT="${2%/}"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,40p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
done

if [ -z "$ROOT" ]; then
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -f /etc/debian_version ] || log "warning: not Debian or Ubuntu; continuing"
else
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  START=0
fi
if [ -n "$TOKEN" ] && [ -n "$TOKEN_FILE" ]; then
  die "--enrollment-token (or SIGMA_ENROLLMENT_TOKEN) and --enrollment-token-file exclude each other"
fi
if [ -n "$PROXY_ARCHIVE" ] || [ -n "$PROXY_SHA256" ]; then
  [ -n "$PROXY_ARCHIVE" ] && [ -n "$PROXY_SHA256" ] ||
    die "--istio-proxy-archive needs --istio-proxy-sha256 (and the other way round)"
  [ "$ISTIO" != off ] || die "--istio-proxy-archive with --no-istio"
  ISTIO=on
fi
is_sha256() {
  [ ${#1} -eq 64 ] || return 1
  case "$1" in *[!0-9a-f]*) return 1 ;; esac
}
for h in "$BINARY_SHA256" "$PROXY_SHA256"; do
  [ -z "$h" ] || is_sha256 "$h" || die "SHA-256 must be 64 lower-case hex digits: $h"
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

# verify FILE HEX WHAT
verify() {
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got" = "$2" ] || die "SHA-256 mismatch for $3: expected $2, got $got"
}

# put SRC DEST MODE: installs SRC as DEST atomically (temporary file + rename) unless DEST
# already has the same content and mode; sets changed=1 when it wrote.
put() {
  if [ -f "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c %a "$2")" = "${3#0}" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$2")"
  install -m "$3" "$1" "$2.install-tmp"
  mv -f "$2.install-tmp" "$2"
  changed=1
  log "installed ${2#"$ROOT"}"
}

# The unit and its drop-ins (the same as deploy/sigma-agent.service and
# deploy/sigma-agent.service.d/*.conf; deploy/test-install checks they do not drift apart).
cat >"$work/sigma-agent.service" <<'UNIT'
# sigma-agent: registers this VPS with sigma-api, heartbeats, exposes metrics on :9102 and
# manages the local proxy. Settings come from /etc/sigma-agent/agent.env, e.g.:
#   SIGMA_API_URL=https://sigma.example.net
#   SIGMA_ENROLLMENT_TOKEN_FILE=/etc/sigma-agent/enrollment-token   (first contact only)
#   AGENT_METRICS_TOKEN_FILE=/etc/sigma-agent/metrics-token           (optional)
# deploy/install-agent.sh installs this unit, the binary and that file. Mesh mode adds the
# drop-in sigma-agent.service.d/istio.conf (pilot-agent and Envoy run inside this sandbox).
[Unit]
Description=sigma agent
Documentation=https://github.com/sigma/sigma
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-/etc/sigma-agent/agent.env
ExecStart=/usr/local/bin/sigma-agent
Restart=always
RestartSec=5
# SIGTERM: every task stops within a few seconds.
TimeoutStopSec=20
StateDirectory=sigma-agent
StateDirectoryMode=0700
Environment=AGENT_STATE_DIR=/var/lib/sigma-agent
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=/var/lib/sigma-agent
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
cat >"$work/istio.conf" <<'UNIT'
# Mesh mode (sigma-agent --istio-enabled): the agent installs the Istio bootstrap bundle and
# runs pilot-agent, which runs Envoy, all inside sigma-agent.service's sandbox
# (ProtectSystem=strict). This opens exactly the paths Istio's VM layout uses:
#   /etc/certs          the mesh's root certificate
#   /etc/istio          mesh config (config/mesh), Envoy's bootstrap and sockets (proxy/)
#   /var/lib/istio      cluster.env, Envoy's bootstrap template, pilot-agent's data, and the
#                       workload certificate and key (certs/: PROV_CERT and OUTPUT_CERTS)
#   /run/secrets        (/var/run/secrets) the istio-token and pilot-agent's sockets
#   /etc/hosts          the "# BEGIN sigma-istio" block; a bind mount here, so the agent
#                       rewrites the file in place instead of renaming over it
# pilot-agent and Envoy run as the istio-proxy user (install-agent.sh --istio creates it),
# with CAP_NET_BIND_SERVICE only when an egress listener is below port 1024.
# Installed by install-agent.sh --istio as
# /etc/systemd/system/sigma-agent.service.d/istio.conf; --no-istio removes it.
[Service]
Environment=AGENT_ISTIO_ENABLED=true
RuntimeDirectory=secrets
RuntimeDirectoryPreserve=yes
ReadWritePaths=/etc/certs /etc/istio /var/lib/istio /etc/hosts
UNIT
cat >"$work/istio-proxy-download.conf" <<'UNIT'
# Lets the agent install pilot-agent and Envoy itself (from the sidecar archive sigma-api's
# bootstrap bundle names, SHA-256 checked) into /usr/local/bin. install-agent.sh --istio adds
# this only when it did not install the proxy itself (--istio-proxy-archive); without it
# /usr stays read-only for the agent.
[Service]
ReadWritePaths=/usr/local/bin
UNIT

# --- check and stage everything --------------------------------------------------------------
[ -n "$BINARY" ] || [ -x "$BIN" ] || BINARY="$DEFAULT_BINARY_URL"
if [ -n "$BINARY" ]; then
  fetch "$BINARY" "$work/sigma-agent"
  [ -z "$BINARY_SHA256" ] || verify "$work/sigma-agent" "$BINARY_SHA256" "$BINARY"
elif [ ! -x "$BIN" ]; then
  die "sigma-agent is not installed yet: give --binary (or SIGMA_AGENT_BINARY)"
fi

# agent.env keeps every line it has; the settings given replace their variables.
: >"$work/agent.env"
[ ! -f "$ENV_FILE" ] || cp "$ENV_FILE" "$work/agent.env"
# setenv NAME VALUE
setenv() {
  grep -v "^$1=" "$work/agent.env" >"$work/agent.env.new" || true
  printf '%s=%s\n' "$1" "$2" >>"$work/agent.env.new"
  mv "$work/agent.env.new" "$work/agent.env"
}
if [ -n "$API_URL" ]; then
  case "$API_URL" in
    http://?*|https://?*) ;;
    *) die "--api-url must be an http(s) URL" ;;
  esac
  case "$API_URL" in *[[:space:]]*) die "--api-url must be an http(s) URL" ;; esac
  setenv SIGMA_API_URL "$API_URL"
fi
if ! grep -q '^SIGMA_API_URL=.' "$work/agent.env" && [ -n "$DEFAULT_API_URL" ]; then
  setenv SIGMA_API_URL "$DEFAULT_API_URL"
fi
grep -q '^SIGMA_API_URL=.' "$work/agent.env" || die "no sigma-api URL yet: give --api-url (or SIGMA_API_URL)"
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
if [ -n "$PROXY_ARCHIVE" ]; then
  fetch "$PROXY_ARCHIVE" "$work/istio-sidecar.tar.gz"
  verify "$work/istio-sidecar.tar.gz" "$PROXY_SHA256" "$PROXY_ARCHIVE"
  mkdir -p "$work/sidecar"
  # Istio's archive names its entries ./usr/…; accept usr/… too.
  for f in usr/local/bin/pilot-agent usr/local/bin/envoy var/lib/istio/envoy/envoy_bootstrap_tmpl.json; do
    tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
      "./$f" 2>/dev/null ||
      tar -xzf "$work/istio-sidecar.tar.gz" -C "$work/sidecar" --no-same-owner --no-same-permissions \
        "$f" 2>/dev/null || true
  done
  [ -f "$work/sidecar/usr/local/bin/pilot-agent" ] && [ -f "$work/sidecar/usr/local/bin/envoy" ] ||
    die "$PROXY_ARCHIVE has no usr/local/bin/pilot-agent and usr/local/bin/envoy (is it Istio's istio-sidecar.tar.gz?)"
fi

# --- write -----------------------------------------------------------------------------------
[ ! -f "$work/sigma-agent" ] || put "$work/sigma-agent" "$BIN" 0755
mkdir -p "$ENV_DIR"
chmod 0700 "$ENV_DIR"
[ ! -f "$work/token" ] || put "$work/token" "$ENV_DIR/enrollment-token" 0600
[ ! -f "$work/metrics-token" ] || put "$work/metrics-token" "$ENV_DIR/metrics-token" 0600
put "$work/agent.env" "$ENV_FILE" 0600
put "$work/sigma-agent.service" "$UNIT_DIR/sigma-agent.service" 0644

# --- mesh mode -------------------------------------------------------------------------------
if [ "$ISTIO" = on ]; then
  if [ -z "$ROOT" ]; then
    getent group istio-proxy >/dev/null || groupadd --system istio-proxy
    getent passwd istio-proxy >/dev/null || useradd --system --gid istio-proxy --home-dir /var/lib/istio \
      --no-create-home --shell /usr/sbin/nologin --comment "Istio proxy (sigma-agent mesh mode)" istio-proxy
  else
    # A test root has no user database to run useradd against: write the entries.
    mkdir -p "$ROOT/etc"
    touch "$ROOT/etc/passwd" "$ROOT/etc/group"
    grep -q '^istio-proxy:' "$ROOT/etc/group" || echo "istio-proxy:x:1337:" >>"$ROOT/etc/group"
    grep -q '^istio-proxy:' "$ROOT/etc/passwd" ||
      echo "istio-proxy:x:1337:1337:Istio proxy (sigma-agent mesh mode):/var/lib/istio:/usr/sbin/nologin" >>"$ROOT/etc/passwd"
  fi
  # Istio's VM layout; the unit's drop-in makes exactly these writable.
  for d in etc/certs etc/istio etc/istio/config etc/istio/proxy var/lib/istio var/lib/istio/envoy; do
    if [ ! -d "$ROOT/$d" ]; then
      mkdir -p "$ROOT/$d"
      log "created /$d"
    fi
    if [ -z "$ROOT" ]; then chown istio-proxy:istio-proxy "/$d"; fi
  done
  [ -e "$ROOT/etc/hosts" ] || : >"$ROOT/etc/hosts"
  put "$work/istio.conf" "$DROPIN_DIR/istio.conf" 0644
  if [ -n "$PROXY_ARCHIVE" ]; then
    put "$work/sidecar/usr/local/bin/pilot-agent" "$ROOT/usr/local/bin/pilot-agent" 0755
    put "$work/sidecar/usr/local/bin/envoy" "$ROOT/usr/local/bin/envoy" 0755
    if [ -f "$work/sidecar/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" ]; then
      put "$work/sidecar/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" \
        "$ROOT/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" 0644
    else
      log "warning: the archive has no var/lib/istio/envoy/envoy_bootstrap_tmpl.json (pilot-agent needs it)"
    fi
  fi
  if [ -x "$ROOT/usr/local/bin/pilot-agent" ] && [ -x "$ROOT/usr/local/bin/envoy" ]; then
    if [ -f "$DROPIN_DIR/istio-proxy-download.conf" ]; then
      rm -f "$DROPIN_DIR/istio-proxy-download.conf"
      changed=1
      log "removed /etc/systemd/system/sigma-agent.service.d/istio-proxy-download.conf"
    fi
  else
    put "$work/istio-proxy-download.conf" "$DROPIN_DIR/istio-proxy-download.conf" 0644
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
  # pilot-agent and Envoy stop with the agent (they run in the unit's cgroup). What the agent
  # installed from its bundle goes now: the hosts block (it points mesh services at loopback
  # listeners that no longer exist), the token and the workload key. The istio-proxy user,
  # Istio's directories and the proxy binaries stay for a later --istio.
  if [ -f "$ROOT/etc/hosts" ] && grep -q '^# BEGIN sigma-istio$' "$ROOT/etc/hosts"; then
    sed '/^# BEGIN sigma-istio$/,/^# END sigma-istio$/d' "$ROOT/etc/hosts" >"$work/hosts"
    cat "$work/hosts" >"$ROOT/etc/hosts"   # in place: /etc/hosts may be a bind mount
    changed=1
    log "removed the sigma-istio block from /etc/hosts"
  fi
  for f in var/run/secrets/tokens/istio-token etc/certs/root-cert.pem var/lib/istio/envoy/cluster.env \
    etc/istio/config/mesh var/lib/istio/certs/key.pem var/lib/istio/certs/cert-chain.pem \
    var/lib/istio/certs/root-cert.pem; do
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
  systemctl enable sigma-agent.service >/dev/null 2>&1
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
