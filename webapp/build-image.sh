#!/usr/bin/env bash
# Builds the demo backend's image, FROM scratch, from a fully static binary.
#
#   webapp/build-image.sh [TAG]        (default TAG: dockscale-webapp:latest)
#
# See scripts/build-scratch-image for what it needs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../scripts/build-scratch-image" dockscale-webapp "$here/Dockerfile" "${1:-dockscale-webapp:latest}"
