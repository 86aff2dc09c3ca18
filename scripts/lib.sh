# Shared helpers for Ember's scripts; source it, do not run it.
# shellcheck shell=bash

EMBER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EMBER_CACHE=${EMBER_CACHE:-$HOME/.cache/ember}
export EMBER_ROOT EMBER_CACHE

# Debian packages every Ember script may need: build, guest kernel, rootfs, nested KVM, bench.
EMBER_PACKAGES=(
  cmake g++ make pkg-config libboost1.81-dev nlohmann-json3-dev catch2 liburing-dev libcli11-dev
  libseccomp-dev clang libclang-rt-14-dev
  linux-source-6.1 flex bison bc libelf-dev libssl-dev xz-utils cpio
  busybox-static e2fsprogs qemu-system-x86 curl python3 gnuplot-nox iproute2 procps kmod util-linux passt
)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs whichever of the given (default: all) packages are missing, non-interactively.
ensure_packages() {
  local want=("$@") missing=() p
  [[ ${#want[@]} -gt 0 ]] || want=("${EMBER_PACKAGES[@]}")
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing missing packages: ${missing[*]}"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Configures and builds Ember into $EMBER_ROOT/build (or $1), quietly unless it fails.
build_ember() {
  local dir=${1:-$EMBER_ROOT/build} type=${2:-RelWithDebInfo}
  log "building Ember ($type) in $dir"
  cmake -S "$EMBER_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE="$type" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}
