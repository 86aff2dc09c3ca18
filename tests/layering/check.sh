#!/usr/bin/env bash
# Checks that the layer include roots the build compiles against (CMakeLists.txt, "Layers") make
# the layering rule hold: every header of a layer compiles against that layer's root alone, and
# an include of a layer above fails to compile there. Also refuses relative includes that could
# climb out of a root ("../").
# Usage: check.sh CXX LAYERS_DIR SOURCE_DIR
set -uo pipefail
cxx=$1 layers=$2 src=$3
fails=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
compile() { # compile LAYER HEADER: 0 if `#include "HEADER"` compiles against LAYER's root
  # From an empty folder: a quoted include searches the including file's folder first, and for
  # standard input that is the working directory.
  (cd "$scratch" && printf '#include "%s"\n' "$2" | "$cxx" -std=c++20 -fsyntax-only -DEMBER_VERSION='"0"' -I "$layers/$1" -x c++ - 2>/dev/null)
}
expect_ok() {
  if compile "$1" "$2"; then echo "ok: $1 may include $2"; else echo "FAIL: $1 cannot include its own $2"; fails=$((fails + 1)); fi
}
expect_refused() {
  if compile "$1" "$2"; then echo "FAIL: $1 can include $2"; fails=$((fails + 1)); else echo "ok: $1 cannot include $2"; fi
}

# Every header compiles against its own layer's root (so it includes nothing from above).
cd "$src"
while read -r layer dir; do
  for h in $(find "$dir" -name '*.hpp' | sort); do
    [[ $layer == vmm && $h == vmm/*/* ]] && continue # the root layer's own files only
    expect_ok "$layer" "$h"
  done
done <<'LAYERS'
base vmm/base
kvm vmm/kvm
arch vmm/arch
devices devices
vmm vmm
LAYERS

# Includes from above are refused.
for h in vmm/kvm/kvm.hpp vmm/arch/x86_64/layout.hpp devices/virtio/device.hpp vmm/vm.hpp api/routes.hpp; do
  expect_refused base "$h"
done
for h in vmm/arch/x86_64/layout.hpp devices/virtio/device.hpp vmm/vcpu.hpp vmm/vm.hpp; do expect_refused kvm "$h"; done
for h in vmm/kvm/kvm.hpp devices/virtio/device.hpp vmm/vcpu.hpp vmm/vm.hpp; do expect_refused arch "$h"; done
for h in vmm/kvm/kvm.hpp vmm/arch/x86_64/layout.hpp vmm/vcpu.hpp vmm/vm.hpp vmm/vm_config.hpp api/routes.hpp; do
  expect_refused devices "$h"
done
expect_refused vmm api/routes.hpp

rel=$(grep -rnE '^#include "[^"]*\.\./' vmm devices api || true)
if [[ -n $rel ]]; then echo "FAIL: relative includes climb out of a layer root:"; echo "$rel"; fails=$((fails + 1)); fi

echo "layering: $fails failure(s)"
[[ $fails -eq 0 ]]
