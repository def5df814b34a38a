#!/usr/bin/env bash
# Installs a released ferry binary for the rest of the job: downloads
# ferry-<version>-<target>.tar.gz from <releases-url>/v<version>/, refuses it
# unless its SHA-256 is the pinned one, and puts ferry on PATH.
#
# Input (environment): FERRY_INSTALL_VERSION, FERRY_INSTALL_SHA256,
# FERRY_INSTALL_RELEASES_URL. From the runner: RUNNER_TEMP, RUNNER_OS,
# RUNNER_ARCH, GITHUB_PATH, GITHUB_OUTPUT (each optional outside Actions).
# Prints nothing it was given: inputs are checked, never echoed.
set -euo pipefail

fail() {
  echo "::error title=ferry install::$*" >&2
  exit 1
}

version="${FERRY_INSTALL_VERSION:-}"
sha256="$(printf '%s' "${FERRY_INSTALL_SHA256:-}" | tr 'A-F' 'a-f')"
releases_url="${FERRY_INSTALL_RELEASES_URL:-}"

[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$ ]] ||
  fail "ferry-version must be a release version such as 0.1.0"
[[ "$sha256" =~ ^[0-9a-f]{64}$ ]] ||
  fail "ferry-sha256 must be the 64 hex digits of the release archive's SHA-256"
# https for the real thing; file:// for a mirror on the runner (and the tests).
[[ "$releases_url" =~ ^(https|file):// ]] ||
  fail "ferry-releases-url must start with https:// (or file:// for a local mirror)"

case "${RUNNER_OS:-Linux}/${RUNNER_ARCH:-X64}" in
  Linux/X64) target=x86_64-unknown-linux-musl ;;
  Linux/ARM64) target=aarch64-unknown-linux-musl ;;
  *) fail "ferry is released for Linux on X64 and ARM64 runners, not ${RUNNER_OS:-}/${RUNNER_ARCH:-}" ;;
esac

asset="ferry-${version}-${target}.tar.gz"
work="$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ferry-install.XXXXXX")"
curl --fail --silent --show-error --location --retry 3 \
  --proto '=https,file' --proto-redir '=https' \
  --output "$work/$asset" "${releases_url%/}/v${version}/${asset}" ||
  fail "cannot download $asset"
if ! printf '%s  %s\n' "$sha256" "$work/$asset" | sha256sum --check --strict --status; then
  rm -f "$work/$asset"
  fail "$asset does not have the pinned SHA-256 (ferry-sha256): refusing to install it"
fi
mkdir "$work/bin"
tar -xzf "$work/$asset" -C "$work/bin" --no-same-owner ferry ||
  fail "$asset has no ferry binary at its top level"
rm -f "$work/$asset"
chmod 0755 "$work/bin/ferry"

reported="$("$work/bin/ferry" --version)"
[ "$reported" = "ferry $version" ] ||
  fail "the installed binary reports '$reported', not 'ferry $version'"
echo "installed $reported ($target) in $work/bin"

if [ -n "${GITHUB_PATH:-}" ]; then
  echo "$work/bin" >>"$GITHUB_PATH"
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  echo "path=$work/bin/ferry" >>"$GITHUB_OUTPUT"
fi
