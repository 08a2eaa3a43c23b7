#!/usr/bin/env bash
# Installs lumen's build dependencies from Debian packages, only those missing.
# Idempotent: a machine that already has everything is left untouched.
set -euo pipefail
pkgs=(cmake g++ make pkg-config libtorch-dev libopenblas0-pthread nlohmann-json3-dev libcli11-dev
      libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libzip-dev libcpp-httplib-dev
      python3-torch python3-numpy)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "lumen: installing missing packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
