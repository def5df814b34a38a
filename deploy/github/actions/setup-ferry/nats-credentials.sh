# Sourced by the ferry actions: writes the NATS secret of the action's
# inputs to a file only the runner's user can read and exports the FERRY_*
# variables ferry reads it from. The secret is never echoed or put on a
# command line.
#
# Input (environment): FERRY_IN_NATS_URL, FERRY_IN_NATS_CREDS (the contents
# of a .creds file), or FERRY_IN_NATS_USER with FERRY_IN_NATS_PASSWORD,
# FERRY_IN_NATS_INBOX_PREFIX.

# ferry_nats_credentials DIR: DIR must exist and be private (mktemp -d).
ferry_nats_credentials() {
  local dir="$1"
  if [ -n "${FERRY_IN_NATS_CREDS:-}" ] && [ -n "${FERRY_IN_NATS_USER:-}" ]; then
    echo "::error title=ferry::give nats-creds or nats-user with nats-password, not both" >&2
    return 1
  fi
  if [ -n "${FERRY_IN_NATS_CREDS:-}" ]; then
    (umask 077 && printf '%s\n' "$FERRY_IN_NATS_CREDS" >"$dir/nats.creds")
    chmod 0600 "$dir/nats.creds"
    export FERRY_NATS_CREDS="$dir/nats.creds"
  fi
  if [ -n "${FERRY_IN_NATS_USER:-}" ]; then
    if [ -z "${FERRY_IN_NATS_PASSWORD:-}" ]; then
      echo "::error title=ferry::nats-user needs nats-password" >&2
      return 1
    fi
    (umask 077 && printf '%s\n' "$FERRY_IN_NATS_PASSWORD" >"$dir/nats.password")
    chmod 0600 "$dir/nats.password"
    export FERRY_NATS_USER="$FERRY_IN_NATS_USER"
    export FERRY_NATS_PASSWORD_FILE="$dir/nats.password"
  fi
  if [ -n "${FERRY_IN_NATS_URL:-}" ]; then
    export FERRY_NATS_URL="$FERRY_IN_NATS_URL"
  fi
  if [ -n "${FERRY_IN_NATS_INBOX_PREFIX:-}" ]; then
    export FERRY_NATS_INBOX_PREFIX="$FERRY_IN_NATS_INBOX_PREFIX"
  fi
}
