#!/bin/sh
# Install the anchor servers the benchmarks compare against (redis-server), only if missing.
# Debian/Ubuntu; run as root. The benchmarks start and stop their own redis-server on a free
# loopback port, so the system service the package may enable is not used.
set -eu
if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update && apt-get install -y redis-server
fi
redis-server --version
