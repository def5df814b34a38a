#!/usr/bin/env bash
# setup-ferry's second step: the NATS inputs as FERRY_* variables for the
# job's later steps. Secrets go to files in a private directory under
# RUNNER_TEMP (emptied when the job ends); only their paths enter GITHUB_ENV.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=nats-credentials.sh
source "$here/nats-credentials.sh"

secrets="$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ferry-nats.XXXXXX")"
ferry_nats_credentials "$secrets"
for name in FERRY_NATS_URL FERRY_NATS_CREDS FERRY_NATS_USER FERRY_NATS_PASSWORD_FILE FERRY_NATS_INBOX_PREFIX; do
  value="${!name:-}"
  # A value with a line break could smuggle another variable into GITHUB_ENV.
  case "$value" in *$'\n'* | *$'\r'*) echo "::error title=ferry::$name must be one line" >&2; exit 1 ;; esac
  if [ -n "$value" ] && [ -n "${GITHUB_ENV:-}" ]; then
    echo "$name=$value" >>"$GITHUB_ENV"
  fi
done
