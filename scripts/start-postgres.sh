#!/usr/bin/env bash
# Starts the Debian PostgreSQL cluster on loopback and creates the role the tests use.
# Prints the export line for STRONGROOM_TEST_POSTGRES_URL. Idempotent.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "error: starting PostgreSQL needs root (it runs pg_ctlcluster and su postgres)" >&2
    exit 2
fi

version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ]; then
    echo "error: PostgreSQL is not installed; run scripts/install-deps.sh --test first" >&2
    exit 2
fi

if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
    pg_createcluster "$version" main >/dev/null
fi
# Listen on loopback only.
conf="/etc/postgresql/$version/main/postgresql.conf"
grep -q "^listen_addresses = 'localhost'" "$conf" || echo "listen_addresses = 'localhost'" >> "$conf"

pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.2
done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "error: PostgreSQL did not start; see /var/log/postgresql/" >&2; exit 1; }

su postgres -c "psql -q -v ON_ERROR_STOP=1" >/dev/null <<'SQL'
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strongroom_test') THEN
        CREATE ROLE strongroom_test LOGIN SUPERUSER PASSWORD 'strongroom_test';
    END IF;
END
$$;
SQL

echo "export STRONGROOM_TEST_POSTGRES_URL=postgres://strongroom_test:strongroom_test@127.0.0.1:5432/postgres"
