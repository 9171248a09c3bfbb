#!/usr/bin/env bash
# Installs what kmsfs needs to build, run and test on Debian: libssl-dev and pkg-config (the
# `openssl` crate links the system OpenSSL 3 for asymmetric and HMAC keys), fuse3 (fusermount3, /dev/fuse
# helpers), attr (getfattr/setfattr for tests), sqlite3 (inspection), and the tools the
# integration tests drive (git, xz-utils; losetup, mount and umount from mount, mountpoint
# and fstrim from util-linux, mkfs.ext4 and e2fsck from e2fsprogs for tests/fs_blockdev.rs; mount(8)
# and fuse3's mount.fuse3 for tests/boot_mount.rs, which installs /sbin/mount.fuse.kmsfs
# itself for its duration; scripts/install.sh installs it for real; tar for tests/stress.rs,
# mount -t tmpfs for tests/enospc.rs; pjdfstest from crates.io for tests/pjdfstest.rs; openssl and curl
# for the TLS case of tests/api_server.rs; moto_server (pinned below) for tests/remote_kms.rs). With
# KMSFS_BENCH=1 also what scripts/bench.sh runs (gocryptfs, securefs, fio, bc, python3 to read
# fio's JSON, and linux-source-6.1 for the untar phase's tarball). For the AWS KMS API suite
# (tests/api, run by pytest) and scripts/bench-api.sh: python3 with pip, the Python packages
# pinned below, and wrk (the load generator that replays a signed request). For the console
# suite (tests/console): headless Chromium and chromedriver (Debian's chromium, chromium-driver),
# Selenium (pinned below) to drive them, and jq for the documented CloudTrail one-liner.
# Idempotent; a no-op when everything is present.
set -euo pipefail

packages=(libssl-dev pkg-config fuse3 attr sqlite3 git xz-utils mount util-linux e2fsprogs tar openssl curl wrk chromium chromium-driver jq)
command -v python3 >/dev/null || packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
[ "${KMSFS_BENCH:-0}" = 1 ] && packages+=(gocryptfs securefs fio bc python3 linux-source-6.1)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pjdfstest, the POSIX conformance suite tests/pjdfstest.rs runs on a mount (a Rust crate:
# built once, into cargo's bin directory).
if ! command -v pjdfstest >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" ]; then
  echo "installing: pjdfstest (cargo install)"
  cargo install --locked --quiet pjdfstest --version 0.2.2
fi

# The API suite's clients. boto3, botocore and awscli 1.x move in lockstep (awscli 1.N+2.x
# ships with botocore 1.N.x): these three are one release of one botocore. moto[server]
# gives moto_server, the comparison in scripts/bench-api.sh.
python_packages=(
  botocore==1.43.11 boto3==1.43.11 awscli==1.45.11 "moto[server]==5.2.1"
  pytest==9.2.0 cryptography==48.0.0 selenium==4.27.1
)
if ! python3 - "${python_packages[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    name = name.split("[")[0]
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
# moto's [server] extra
for extra in ("flask", "flask_cors"):
    try:
        version(extra.replace("_", "-"))
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "installing: ${python_packages[*]}"
  # Debian's own python3 is marked externally managed (PEP 668); this machine's tests own it.
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  [ -e "$stdlib/EXTERNALLY-MANAGED" ] && export PIP_BREAK_SYSTEM_PACKAGES=1
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${python_packages[@]}"
  command -v pyenv >/dev/null && pyenv rehash
fi

# A fresh container may lack the device node although the kernel has FUSE.
if [ ! -e /dev/fuse ] && [ "$(id -u)" -eq 0 ]; then
  mknod -m 0666 /dev/fuse c 10 229 || true
fi
[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing; kmsfs needs FUSE (modprobe fuse)" >&2; exit 1; }
