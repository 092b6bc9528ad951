#!/bin/sh
# The compose stack's `provision` step (docker-compose.yml), after `migrate`:
# credentials for polegw's own services, the site's private CA and the broker's
# certificate, then Mosquitto's password, ACL and conf files. Idempotent: a
# secret or certificate that exists is kept. Runs as root only to hand the files
# to their readers: the broker's to mosquitto (uid 1883), the secrets to polegw
# (uid 10001), each readable by its owner alone.
set -eu
# Folders as the compose file mounts them (overridable for a test run).
secrets=${POLEGW_PROVISION_SECRETS:-/run/polegw-secrets}
broker=${POLEGW_PROVISION_BROKER:-/broker}
ca=${POLEGW_PROVISION_CA:-/ca}

for service in gateway simulators monitor; do
    file="$secrets/$service"
    # `issue` refuses (and writes nothing) when the database has a secret already;
    # if this volume lost the file meanwhile, make a new one with `rotate`.
    polegw broker credentials issue "$service" --secret-file "$file" 2>/dev/null \
        || [ -s "$file" ] \
        || polegw broker credentials rotate "$service" --secret-file "$file"
done

# The CA's key stays in the polegw-ca volume, which only this service mounts
# (README, "Production deployment", says how to make pole certificates with it).
if [ ! -s "$ca/server.crt" ]; then
    polegw broker certs --out "$ca" --server-name mosquitto --server-name localhost
fi
mkdir -p "$broker/certs"
cp "$ca/ca.crt" "$ca/server.crt" "$ca/server.key" "$broker/certs/"
cp "$ca/ca.crt" "$secrets/ca.crt"

# The broker reads the files at /mosquitto/config/polegw; 1883 stays on the
# container's loopback (its health check), 8883 and 8884 are published.
polegw broker config --out "$broker" --config-dir /mosquitto/config/polegw --plain-port 1883

chmod 600 "$secrets"/gateway "$secrets"/simulators "$secrets"/monitor
if [ "$(id -u)" = 0 ]; then
    chown -R 1883:1883 "$broker"
    chown -R 10001:10001 "$secrets"
fi
