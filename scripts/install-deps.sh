#!/usr/bin/env bash
# Installs the Debian packages Strongroom needs on Debian 12. As root it installs what
# is missing; otherwise it names what is missing and exits 2.
#
#   scripts/install-deps.sh           build and run (scripts/start.sh)
#   scripts/install-deps.sh --deploy  also docker-compose (docs/deploy.md)
#   scripts/install-deps.sh --test    also everything the test suite uses (scripts/test.sh)
#
#   build:   pkg-config libclang-dev libavdevice-dev (FFmpeg headers for ffmpeg-next)
#   images:  mmdebstrap (workspace and bank images from Debian packages, no registry)
#   run:     docker.io (the engine), iptables iproute2 (host firewall, test namespaces),
#            curl (start.sh fetches the demo bank's CA), python3 (start.sh checks
#            DEMO_BANK_SUBNET with its ipaddress module)
#   deploy:  docker-compose (the compose file; the compose test runs `docker-compose config`)
#   tests:   postgresql, chromium chromium-driver xvfb xauth (agent and portal tests),
#            ffmpeg (ffprobe checks exports), dpkg-dev (launcher tests unpack busybox-static)
set -euo pipefail

packages=(
    pkg-config libclang-dev libavdevice-dev
    mmdebstrap
    iptables iproute2 ca-certificates curl python3
)
deploy_packages=(docker-compose)
test_packages=(
    postgresql
    chromium chromium-driver xvfb xauth fonts-dejavu-core
    ffmpeg dpkg-dev
)

case "${1:-}" in
    "") ;;
    --deploy) packages+=("${deploy_packages[@]}") ;;
    --test) packages+=("${deploy_packages[@]}" "${test_packages[@]}") ;;
    *)
        echo "error: unknown option '$1'; use no option (build and run), --deploy or --test" >&2
        exit 2
        ;;
esac

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ! command -v docker >/dev/null 2>&1; then
    missing+=(docker.io)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 2
fi

echo "Installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
