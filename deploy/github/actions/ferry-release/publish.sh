#!/usr/bin/env bash
# The ferry-release action's publish step: `ferry release publish` with the
# action's inputs, authenticated by the NATS secret written to a private
# temporary file that is removed when the step ends, whatever happens.
#
# Input (environment): FERRY_BIN (the installed ferry), FERRY_IN_SERVICE,
# FERRY_IN_VERSION, FERRY_IN_ARTIFACT, FERRY_IN_DIGEST, FERRY_IN_SCAN_REPORT,
# FERRY_IN_SCAN_FORMAT, FERRY_IN_HOTFIX (true/false), FERRY_IN_ENV (KEY=VALUE
# lines), FERRY_IN_AUTHOR, FERRY_IN_COMMIT and the NATS inputs of
# ../setup-ferry/nats-credentials.sh. From the runner: RUNNER_TEMP,
# GITHUB_ACTOR, GITHUB_SHA, GITHUB_OUTPUT.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../setup-ferry/nats-credentials.sh
source "$here/../setup-ferry/nats-credentials.sh"

fail() {
  echo "::error title=ferry release publish::$*" >&2
  exit 1
}

args=(release publish
  --service "${FERRY_IN_SERVICE:-}"
  --version "${FERRY_IN_VERSION:-}"
  --artifact "${FERRY_IN_ARTIFACT:-}"
  --author "${FERRY_IN_AUTHOR:-${GITHUB_ACTOR:-}}"
  --commit "${FERRY_IN_COMMIT:-${GITHUB_SHA:-}}")
if [ -n "${FERRY_IN_DIGEST:-}" ]; then
  args+=(--digest "$FERRY_IN_DIGEST")
fi
if [ -n "${FERRY_IN_SCAN_REPORT:-}" ]; then
  [ -f "$FERRY_IN_SCAN_REPORT" ] || fail "scan-report: no such file: $FERRY_IN_SCAN_REPORT"
  args+=(--scan-report "$FERRY_IN_SCAN_REPORT")
fi
if [ -n "${FERRY_IN_SCAN_FORMAT:-}" ]; then
  args+=(--scan-format "$FERRY_IN_SCAN_FORMAT")
fi
case "${FERRY_IN_HOTFIX:-false}" in
  true) args+=(--hotfix) ;;
  false | "") ;;
  *) fail "hotfix must be true or false" ;;
esac
while IFS= read -r variable; do
  if [ -n "$variable" ]; then
    args+=(--env "$variable")
  fi
done <<<"${FERRY_IN_ENV:-}"

secrets="$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ferry-nats.XXXXXX")"
trap 'rm -rf "$secrets"' EXIT
ferry_nats_credentials "$secrets"
# CI's NATS user may read replies only under its own inbox prefix.
export FERRY_NATS_INBOX_PREFIX="${FERRY_NATS_INBOX_PREFIX:-_INBOX_ferry_ci}"

result="$("${FERRY_BIN:-ferry}" --output json "${args[@]}")"
echo "$result"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  delimiter="ferry_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  printf 'result<<%s\n%s\n%s\n' "$delimiter" "$result" "$delimiter" >>"$GITHUB_OUTPUT"
fi
