#!/usr/bin/env bash
# Downloads (does not install) the Debian -dev packages lumen builds against, for a GPU machine
# that reaches no package registry: carry the folder there and give it to scripts/cuda-check.sh.
#
#   scripts/fetch-debs.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/fetch-debs.sh DIR}
mkdir -p "$dir"
cd "$dir"
# libtorch comes from the torch Python package there, so it is not among these.
apt-get download nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev \
  libbenchmark1debian libsqlite3-dev libzip-dev libzip4 zlib1g-dev pkgconf pkgconf-bin libpkgconf3 pkg-config
ls -1 "$dir"
