#!/usr/bin/env bash
# Builds dockscale's own image, FROM scratch, from a fully static binary.
#
#   packaging/build-image.sh [TAG]        (default TAG: dockscale:latest)
#
# See scripts/build-scratch-image for what it needs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../scripts/build-scratch-image" dockscale "$here/Dockerfile" "${1:-dockscale:latest}"
