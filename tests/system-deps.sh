#!/bin/sh
# Debian packages that two integration tests need: PostgreSQL (the team-server test) and Chromium (the
# MLflow UI test, driven by Playwright with this browser; nothing is downloaded by Playwright).
# Installed when missing and this runs as root with apt-get; otherwise those tests are skipped with the
# reason. With CI=true a failed install fails the test command: CI must not turn those tests into skips.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$missing postgresql"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; } ||
        { echo "could not install$missing: their tests will be skipped${CI:+ (CI=$CI)}"; [ "$CI" != true ] || exit 1; }
else
    echo "not installed:$missing (needs root and apt-get): their tests will be skipped"
    [ "$CI" != true ] || exit 1
fi
exit 0
