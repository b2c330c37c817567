#!/bin/sh
# Install the anchor servers the benchmarks compare against (redis-server, memcached), only if
# missing. Debian/Ubuntu; run as root. The benchmarks start and stop their own servers on free
# loopback ports, so the system services the packages may enable are not used.
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v memcached >/dev/null 2>&1 || missing="$missing memcached"
if [ -n "$missing" ]; then
    apt-get update && apt-get install -y $missing
fi
redis-server --version
memcached -V
