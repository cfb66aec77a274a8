#!/usr/bin/env bash
# Runs Strongroom on embedded defaults on this machine, with a demo bank to bank at.
# It installs missing Debian packages and builds the binaries and the workspace and
# demo bank images. Then it starts the demo bank container on its own Docker network,
# imports the demo site with its credential, creates a first admin when there is none,
# and starts the broker, which starts its launcher. Ctrl-C stops the broker and removes the demo
# bank's container and network. Everything it writes goes under ./data.
#
# Environment:
#   STRONGROOM_CONFIG          configuration file (default: none, embedded defaults).
#   STRONGROOM_SERVER__LISTEN  portal address (default 127.0.0.1:8080). Any address
#                              other than loopback gets HTTPS with a generated local CA.
#                              The script prints the address and scheme that
#                              `strongroom check-config` reports for the configuration.
#   DEMO_BANK_SUBNET           Docker subnet of the demo bank (default 172.31.254.0/24):
#                              an IPv4 range of /28 or larger outside launcher.subnet_range
#                              (172.21.0.0/16, or STRONGROOM_LAUNCHER__SUBNET_RANGE).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "error: Strongroom's launcher talks to the Docker engine and the first run installs" >&2
    echo "packages, so run this as root (sudo scripts/start.sh)" >&2
    exit 2
fi

# sudo resets PATH, which drops the ~/.cargo/bin that rustup adds to a user's PATH. The
# invoking user's rustup and toolchains then build as root; CARGO_HOME stays root's, so
# that the crates root downloads do not end up root-owned in that user's home.
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
    sudo_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -n "$sudo_home" ] && [ -x "$sudo_home/.cargo/bin/cargo" ]; then
        echo "Using the Rust toolchain of $SUDO_USER ($sudo_home/.cargo/bin, $sudo_home/.rustup)"
        export RUSTUP_HOME=${RUSTUP_HOME:-$sudo_home/.rustup}
        export PATH="$sudo_home/.cargo/bin:$PATH"
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not on root's PATH${SUDO_USER:+ nor in ~$SUDO_USER/.cargo/bin}, and this script" >&2
    echo "builds Strongroom from source; install Rust 1.95 with rustup (https://rustup.rs), or" >&2
    echo "run: sudo env \"PATH=\$HOME/.cargo/bin:\$PATH\" RUSTUP_HOME=\$HOME/.rustup scripts/start.sh" >&2
    exit 2
fi

# One demo per checkout: a second run would replace the running demo bank. The lock
# lives as long as this script and the broker it starts.
mkdir -p data
exec {start_lock}>data/start.lock
if ! flock --nonblock "$start_lock"; then
    echo "error: a Strongroom demo is already running from this checkout, or still building;" >&2
    echo "stop it with Ctrl-C in its terminal first" >&2
    exit 1
fi

scripts/install-deps.sh

subnet=${DEMO_BANK_SUBNET:-172.31.254.0/24}
# Environment overrides may quote the value as a TOML string.
launcher_range=${STRONGROOM_LAUNCHER__SUBNET_RANGE:-172.21.0.0/16}
launcher_range=${launcher_range//\"/}
# Prints the bank's address, the network's tenth; the gateway takes the first.
if ! bank_ip=$(python3 - "$subnet" "$launcher_range" <<'EOF'
import ipaddress
import sys

subnet, launcher_range = sys.argv[1], sys.argv[2]
example = "such as 172.31.254.0/24"
try:
    network = ipaddress.IPv4Network(subnet)
except ValueError as error:
    print(f"error: DEMO_BANK_SUBNET={subnet} is not an IPv4 range in CIDR notation ({error}); "
          f"write one {example}", file=sys.stderr)
    sys.exit(2)
if network.prefixlen > 28:
    print(f"error: DEMO_BANK_SUBNET={subnet} is smaller than a /28, which the demo bank at its "
          f"tenth address needs; write a larger range {example}", file=sys.stderr)
    sys.exit(2)
try:
    launcher = ipaddress.IPv4Network(launcher_range)
except ValueError as error:
    print(f"error: STRONGROOM_LAUNCHER__SUBNET_RANGE={launcher_range} is not an IPv4 range in "
          f"CIDR notation ({error}); write one such as 172.21.0.0/16", file=sys.stderr)
    sys.exit(2)
if network.overlaps(launcher):
    print(f"error: DEMO_BANK_SUBNET={subnet} overlaps launcher.subnet_range {launcher}, where "
          f"the launcher creates session networks; choose a range outside it {example}",
          file=sys.stderr)
    sys.exit(2)
print(network.network_address + 10)
EOF
); then
    exit 2
fi
bank_host=demo-bank.test
bank_port=8443
network=strongroom-demo-bank
container=strongroom-demo-bank
bank_dir=$PWD/data/demo-bank

# The demo bank's names are fixed, so a demo started from another checkout holds them
# while its script runs. A container whose script has gone is replaced further down.
owner_pid=$(docker inspect --format '{{ index .Config.Labels "org.strongroom.demo.pid" }}' \
    "$container" 2>/dev/null || true)
if [ -n "$owner_pid" ] && [ "$owner_pid" != "$$" ] && kill -0 "$owner_pid" 2>/dev/null; then
    echo "error: a Strongroom demo is already running (container $container, started by" >&2
    echo "process $owner_pid); stop it with Ctrl-C in its terminal first" >&2
    exit 1
fi

bin=target/release/strongroom
# Checks the configuration with the binary, which prints every problem, and sets
# portal_url, portal_tls and data_dir from what it reports.
check_config() {
    local report
    if ! report=$("$bin" check-config); then
        echo "error: the configuration is invalid (see above); fix it and run scripts/start.sh again" >&2
        exit 2
    fi
    portal_url=$(printf '%s\n' "$report" | sed -n 's/^portal: //p')
    portal_tls=$(printf '%s\n' "$report" | sed -n 's/^tls: //p')
    data_dir=$(printf '%s\n' "$report" | sed -n 's/^data_dir: //p')
}
# A binary from an earlier build checks the configuration before the long build.
if [ -x "$bin" ]; then
    check_config
    echo "Configuration is valid; the portal will serve $portal_url"
fi

echo "Building strongroom, strongroom-agent and strongroom-demo-bank (release)..."
cargo build --release -p broker -p strongroom-agent -p strongroom-demo-bank
check_config

echo "Building the workspace and demo bank images from Debian packages (skipped when unchanged)..."
workspace_image=$("$bin" image build | tee >(cat >&2) | sed -n 's/^image ready: //p')
if [ -z "$workspace_image" ]; then
    echo "error: the workspace image build printed no image reference" >&2
    exit 1
fi
# Sessions run the image built from this checkout, even when the engine has newer ones.
export STRONGROOM_LAUNCHER__IMAGE="\"$workspace_image\""
bank_image=$("$bin" image build --recipe demo-bank | sed -n 's/^image ready: //p')
if [ -z "$bank_image" ]; then
    echo "error: the demo bank image build printed no image reference" >&2
    exit 1
fi

echo "Installing the host firewall rules for workspace networks..."
"$bin" host-setup

# The demo bank's account: generated once, kept under data/demo-bank for the next run.
# The bank reads the same files that `strongroom credential set` stores below.
if [ ! -f "$bank_dir/account/totp-seed" ]; then
    install -d -m 0700 "$bank_dir/account"
    printf 'demo-customer\n' > "$bank_dir/account/username"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$bank_dir/account/password"
    head -c 20 /dev/urandom | base32 | tr -d '=' > "$bank_dir/account/totp-seed"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$bank_dir/received-token"
fi
# The bank reads its files through a read-only mount as the image's own user, a uid
# reserved for it that no host account should have (DEMO_BANK_UID in the recipe).
bank_user=$(docker image inspect --format '{{.Config.User}}' "$bank_image")
case "$bank_user" in
    "" | 0 | 0:* | root | root:*)
        echo "error: the demo bank image $bank_image runs as '${bank_user:-root}'; rebuild it with" >&2
        echo "\`$bin image build --recipe demo-bank\`" >&2
        exit 1
        ;;
esac
chown -R "$bank_user" "$bank_dir"
chmod -R go-rwx "$bank_dir"

cleanup() {
    trap - EXIT INT TERM
    echo "Removing the demo bank container and network..."
    docker rm -f "$container" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
}

# A container or network left by an earlier run that did not finish is replaced.
docker rm -f "$container" >/dev/null 2>&1 || true
docker network rm "$network" >/dev/null 2>&1 || true
trap cleanup EXIT INT TERM

echo "Starting the demo bank at https://$bank_host:$bank_port on $subnet..."
if ! docker network create --internal --subnet "$subnet" \
    --label org.strongroom.demo=bank "$network" >/dev/null; then
    echo "error: cannot create the Docker network $network on $subnet; if it overlaps" >&2
    echo "another network, set DEMO_BANK_SUBNET to a free range such as 10.213.7.0/24" >&2
    exit 1
fi
docker run --detach --name "$container" --network "$network" --ip "$bank_ip" \
    --label org.strongroom.demo=bank --label "org.strongroom.demo.pid=$$" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --memory 256m --cpus 0.5 --pids-limit 128 \
    --volume "$bank_dir:/run/demo-bank:ro" \
    "$bank_image" \
    --account-dir /run/demo-bank/account \
    --received-token-file /run/demo-bank/received-token \
    --hostname "$bank_host" >/dev/null

# The bank generates a new CA at each start and serves it on its plain-HTTP port. The
# site carries it, so the workspace's Chromium trusts it for demo bank sessions only.
ca_file=data/demo-bank-ca.pem
rm -f "$ca_file"
for _ in $(seq 1 60); do
    if curl --silent --fail --max-time 2 --output "$ca_file" "http://$bank_ip:8081/ca.pem"; then
        break
    fi
    sleep 1
done
if ! grep -q "BEGIN CERTIFICATE" "$ca_file" 2>/dev/null; then
    echo "error: the demo bank did not serve its CA at http://$bank_ip:8081/ca.pem within 60 s;" >&2
    echo "see \`docker logs $container\`" >&2
    exit 1
fi

# The egress proxy resolves the bank's name to its container. Every other name goes
# through the host's resolver.
export STRONGROOM_EGRESS__HOSTS="{ \"$bank_host\" = [\"$bank_ip\"] }"

# The site file is shared with the end-to-end test; only the subnet is filled in here.
sed "s|@SUBNET@|$subnet|" tests/demo-bank/site.toml > data/demo-site.toml
"$bin" site import data/demo-site.toml
"$bin" credential set demo-bank \
    --username-file "$bank_dir/account/username" \
    --password-file "$bank_dir/account/password" \
    --totp-seed-file "$bank_dir/account/totp-seed"

# `user list` prints a header line, then one line per account.
if [ "$("$bin" user list | wc -l)" -le 1 ]; then
    echo
    echo "Creating the first admin account 'admin'."
    "$bin" user add admin --role admin --role user --generate-password
    echo
fi
"$bin" site grant admin demo-bank

if [ "$portal_tls" = generated ]; then
    echo "The portal uses a certificate from the local CA in $data_dir/tls/ca.pem (created at"
    echo "first start); import it into your browser, or set server.tls_cert and tls_key."
fi
echo "More sites: $bin site import FILE, then $bin site grant admin SITE"
echo "Starting Strongroom at $portal_url: sign in as 'admin' and launch Demo Bank (Ctrl+C stops it)"
# The broker runs in its own session, so a Ctrl-C in the terminal reaches only this
# script, which passes each signal on once. The broker counts them: the first stops it
# gracefully, the second removes its workspaces at once, and the third exits.
setsid "$bin" serve &
serve_pid=$!
trap 'kill -INT "$serve_pid" 2>/dev/null || true' INT TERM HUP
status=0
# Each forwarded signal interrupts `wait`; waiting ends when the broker has exited.
while :; do
    if wait "$serve_pid"; then status=0; else status=$?; fi
    kill -0 "$serve_pid" 2>/dev/null || break
done
cleanup
exit "$status"
