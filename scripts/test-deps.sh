#!/usr/bin/env bash
# Installs what the test suite needs, where it is missing, from Debian's
# (or Ubuntu's) packages; says what it installs, and stops with the list
# when it cannot install (not root and no sudo).
#
#   cc, libc6-dev      build the C plugins (examples/c-allowlist, tests/plugins/c-*)
#   libfastjson-dev    mq-host links libfastjson (MQ_json); C test plugins use its header
#   redis-server       serves the Redis allow-list example's test
#   swaks, python3     SMTP clients of the serve tests
#   python3-aiosmtpd   the relay the delivery tests deliver to
#   python3-dkim       the independent DKIM verifier of the DKIM recipe's test
#   openssl            makes that test's keys
#   valgrind           runs the soundness suite (tests/tests/soundness.rs)
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
[ -f /usr/include/libfastjson/json.h ] || missing+=(libfastjson-dev)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import aiosmtpd' >/dev/null 2>&1 || /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 ||
    missing+=(python3-aiosmtpd)
python3 -c 'import dkim' >/dev/null 2>&1 || /usr/bin/python3 -c 'import dkim' >/dev/null 2>&1 ||
    missing+=(python3-dkim)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "test dependencies: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "test dependencies: cannot install ${missing[*]} (not root, no sudo);" \
        "install them with: apt-get install ${missing[*]}" >&2
    exit 1
fi
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}"
