#!/bin/sh
# Installs what qft builds and tests with, from Debian 12's archive. Idempotent.
# Runs apt-get as root, or through sudo when not root.
set -eu
pkgs="build-essential meson ninja-build pkg-config libconfig-dev check libsubunit-dev
      libopenblas-dev libpcre2-dev libjansson-dev openmpi-bin libopenmpi-dev"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
