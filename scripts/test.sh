#!/usr/bin/env bash
# Runs the whole test suite: installs missing packages (as root), starts PostgreSQL on
# loopback, and runs every test of every crate against the real Docker engine,
# PostgreSQL, SQLite, Chromium and Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "error: the test suite needs root: it talks to the Docker engine, mounts small tmpfs" >&2
    echo "file systems and creates network namespaces; run it as root on a test machine" >&2
    exit 2
fi

scripts/install-deps.sh --test
# The launcher tests fetch busybox-static with `apt-get download`, which needs package lists.
[ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update -qq

eval "$(scripts/start-postgres.sh)"
export STRONGROOM_TEST_POSTGRES_URL

# The OIDC tests run a real third-party OpenID provider from PyPI.
if ! python3 -c "import oidc_provider_mock" >/dev/null 2>&1; then
    python3 -m pip install --quiet oidc-provider-mock
fi
# The recorder's S3 tests run moto, an S3-compatible server from PyPI, on loopback.
if ! python3 -c "import moto.server" >/dev/null 2>&1; then
    python3 -m pip install --quiet 'moto[server]'
fi
# The admin API tests fuzz the OpenAPI document with schemathesis.
if ! command -v schemathesis >/dev/null 2>&1; then
    python3 -m pip install --quiet schemathesis
fi

# The portal tests run real sessions in the workspace image; build it (from Debian
# packages, skipped when unchanged) with the agent under test. The end-to-end test
# also runs the demo bank image, and the compose test the broker image.
cargo build --quiet -p broker -p strongroom-agent -p strongroom-demo-bank
# The end-to-end tests run exactly this image, even when other images are newer.
STRONGROOM_TEST_WORKSPACE_IMAGE=$(target/debug/strongroom image build | tee >(cat >&2) | sed -n 's/^image ready: //p')
if [ -z "$STRONGROOM_TEST_WORKSPACE_IMAGE" ]; then
    echo "error: the workspace image build printed no image reference" >&2
    exit 1
fi
export STRONGROOM_TEST_WORKSPACE_IMAGE
target/debug/strongroom image build --recipe demo-bank
target/debug/strongroom image build --recipe broker

# Benches run only by hand, so compile them here, in the test profile, to catch one that
# no longer builds. This reuses the dependencies built for the tests.
cargo test --workspace --all-features --benches --no-run

cargo nextest run --workspace --all-features --no-fail-fast "$@"
