#!/usr/bin/env bash
# Builds what a GPU machine runs (the release `tern` and the wgpu test binaries) into devbin/
# and fetches the Vulkan loader packages into .gl/ (both ignored by git), for a machine that
# can run x86-64 binaries but cannot build or download. Run from the repository root; then
# carry devbin and .gl and run `bash scripts/device-run.sh` there (docs/benchmarks/wgpu-h200.md).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
ex="$(git rev-parse --git-common-dir)/info/exclude"
for d in /devbin/ /.gl/; do grep -qxF "$d" "$ex" 2>/dev/null || echo "$d" >> "$ex"; done
if ! ls .gl/*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2)
fi
cargo build --release -p tern
mkdir -p devbin
cp target/release/tern devbin/
cargo build --release -p tern-wgpu --example dispatch_floor
cp target/release/examples/dispatch_floor devbin/
cargo test --release -p tern-wgpu --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] == ["test"]:
        shutil.copy(exe, "devbin/" + m["target"]["name"])
'
du -sh devbin .gl
