#!/usr/bin/env bash
# Starts the OPSCI Strapi (production mode) on $HOST:$PORT, 127.0.0.1:1337 by
# default, installing what it needs first.
#
#   strapi/run.sh            install if needed, then exec `strapi start`
#   strapi/run.sh install    only install (and build, if the admin panel is wanted)
#
# Works from any directory. What it needs:
#   - node_modules, from package-lock.json with `npm ci` (npm's cache first);
#     reinstalled when package-lock.json changes;
#   - the admin panel's build, only with SERVE_ADMIN_PANEL=true: by default
#     the admin panel is not served, so the REST API needs no build at all.
#
# Settings (environment):
#   HOST, PORT                  where to listen (127.0.0.1, 1337)
#   DATABASE_CLIENT             sqlite (default) or postgres (then DATABASE_HOST,
#                               DATABASE_PORT, DATABASE_NAME, DATABASE_USERNAME,
#                               DATABASE_PASSWORD, DATABASE_SSL, or DATABASE_URL)
#   DATABASE_FILENAME           SQLite file, relative to this directory or
#                               absolute (.tmp/data.db)
#   PUBLIC_DIR                  static files and local uploads (./public); give
#                               each instance its own when several run at once
#   STRAPI_TOKEN                if set, a full-access API token with exactly this
#                               value is provisioned at start (src/index.js)
#   SERVE_ADMIN_PANEL           true to build and serve the admin panel (false)
#   APP_KEYS, API_TOKEN_SALT, ADMIN_JWT_SECRET, TRANSFER_TOKEN_SALT, JWT_SECRET,
#   ENCRYPTION_KEY              secrets; DEV-ONLY defaults below when unset
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

mode="${1:-start}"
case "$mode" in
    start | install) ;;
    *)
        echo "usage: $0 [install]" >&2
        exit 2
        ;;
esac

export SERVE_ADMIN_PANEL="${SERVE_ADMIN_PANEL:-false}"
export STRAPI_TELEMETRY_DISABLED="${STRAPI_TELEMETRY_DISABLED:-true}"

# node_modules matches package-lock.json when npm ci finished with this lock
# file (a copy of it is kept as the stamp).
stamp=node_modules/.opsci-package-lock.json
installed() {
    [[ -d node_modules ]] && cmp -s package-lock.json "$stamp"
}
admin_wanted() {
    [[ "$SERVE_ADMIN_PANEL" == true ]]
}
admin_built() {
    [[ -f build/index.html ]]
}

install() {
    if installed && { ! admin_wanted || admin_built; }; then
        return
    fi
    # One installer at a time (parallel tests may all start here).
    exec 9>.install.lock
    flock 9
    if ! installed; then
        echo "run.sh: installing node modules (npm ci)" >&2
        # better-sqlite3 compiles against the local Node.js headers when no
        # prebuilt binary can be downloaded.
        if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node.h ]]; then
            export npm_config_nodedir=/usr
        fi
        local started=$SECONDS
        npm ci --prefer-offline --no-audit --no-fund --loglevel=error
        cp package-lock.json "$stamp"
        echo "run.sh: npm ci took $((SECONDS - started)) s" >&2
    fi
    if admin_wanted && ! admin_built; then
        echo "run.sh: building the admin panel (strapi build)" >&2
        local started=$SECONDS
        NODE_ENV=production node_modules/.bin/strapi build
        echo "run.sh: strapi build took $((SECONDS - started)) s" >&2
    fi
    flock -u 9
    exec 9>&-
}

install
if [[ "$mode" == install ]]; then
    exit 0
fi

export NODE_ENV=production
export HOST="${HOST:-127.0.0.1}"
export PORT="${PORT:-1337}"

# DEV-ONLY secrets, for local runs and tests. Never use them in a deployment:
# set real values in the environment or in strapi/.env (not committed), and
# these defaults are not used.
dev_default() {
    local name=$1 value=$2
    if [[ -z "${!name:-}" ]] && ! grep -qs "^[[:space:]]*$name=" "${ENV_PATH:-.env}"; then
        export "$name=$value"
    fi
}
dev_default APP_KEYS dev-only-app-key-1,dev-only-app-key-2
dev_default API_TOKEN_SALT dev-only-api-token-salt
dev_default ADMIN_JWT_SECRET dev-only-admin-jwt-secret
dev_default TRANSFER_TOKEN_SALT dev-only-transfer-token-salt
dev_default JWT_SECRET dev-only-jwt-secret
dev_default ENCRYPTION_KEY dev-only-encryption-key

# The local upload provider needs <public>/uploads to exist.
if [[ -n "${PUBLIC_DIR:-}" ]]; then
    mkdir -p "$PUBLIC_DIR/uploads"
fi

exec node_modules/.bin/strapi start
