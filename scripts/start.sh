#!/usr/bin/env bash
# Runs Strongroom on embedded defaults on this machine: installs missing Debian
# packages, builds the binaries and the workspace image, creates a first admin when
# there is none, and starts the broker (which starts its launcher) on
# http://127.0.0.1:8080. Everything it writes goes under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "error: Strongroom's launcher talks to the Docker engine and the first run installs" >&2
    echo "packages, so run this as root (sudo scripts/start.sh)" >&2
    exit 2
fi

scripts/install-deps.sh

echo "Building strongroom and strongroom-agent (release)..."
cargo build --release --quiet -p broker -p strongroom-agent
bin=target/release/strongroom

echo "Building the workspace image from Debian packages (skipped when unchanged)..."
"$bin" image build

echo "Installing the host firewall rules for workspace networks..."
"$bin" host-setup

# `user list` prints a header line, then one line per account.
if [ "$("$bin" user list | wc -l)" -le 1 ]; then
    echo
    echo "Creating the first admin account 'admin'."
    "$bin" user add admin --role admin --role user --generate-password
    echo "Sign in with this password; the portal then sets up an authenticator app and asks for a new password."
    echo
fi

echo "Sites are added with: $bin site import FILE, then $bin site grant admin SITE"
echo "Starting Strongroom at http://127.0.0.1:8080 (Ctrl+C stops it)"
exec "$bin" serve
