#!/usr/bin/env bash
# Builds dockscale's own image, FROM scratch, from a fully static binary.
#
#   packaging/build-image.sh [TAG]        (default TAG: dockscale:latest)
#
# Works from any directory. Honours CARGO_TARGET_DIR (default: <repo>/target).
# Needs cargo, the x86_64-unknown-linux-gnu target with glibc's static libraries
# (libc6-dev), and a Docker engine; nothing is pulled from any registry.
set -euo pipefail

tag="${1:-dockscale:latest}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

# crt-static with an explicit --target links the binary statically without applying
# the flag to build scripts and proc-macros (as webapp/build-image.sh does).
echo "building the static binary (target dir: $target_dir)" >&2
(
    cd "$repo"
    RUSTFLAGS='-C target-feature=+crt-static' \
        CARGO_TARGET_DIR="$target_dir" \
        CARGO_PROFILE_RELEASE_DEBUG=0 \
        CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --locked --release -p dockscale --target "$target"
)
binary="$target_dir/$target/release/dockscale"

# A scratch image has no loader: refuse a binary that would need one.
if readelf --program-headers "$binary" 2>/dev/null | grep -q INTERP; then
    echo "error: $binary is dynamically linked" >&2
    exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/dockscale"

# The legacy builder: this Docker has no buildx plugin, and BuildKit without it fails.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" --file "$here/Dockerfile" "$context" >/dev/null

docker image inspect --format '{{.Id}} {{.Size}}' "$tag" | {
    read -r id size
    echo "built $tag"
    echo "image id: $id"
    echo "size: $size bytes ($((size / 1024)) KiB)"
}
