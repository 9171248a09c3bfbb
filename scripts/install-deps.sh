#!/usr/bin/env bash
# Installs what kmsfs needs at run and test time on Debian: fuse3 (fusermount3, /dev/fuse
# helpers), attr (getfattr/setfattr for tests), sqlite3 (inspection), and the tools the
# integration tests drive (git, xz-utils; losetup, mount and umount from mount, mountpoint
# and fstrim from util-linux, mkfs.ext4 and e2fsck from e2fsprogs for tests/fs_blockdev.rs; mount(8)
# and fuse3's mount.fuse3 for tests/boot_mount.rs, which installs /sbin/mount.fuse.kmsfs
# itself for its duration; scripts/install.sh installs it for real; tar for tests/stress.rs,
# mount -t tmpfs for tests/enospc.rs; pjdfstest from crates.io for tests/pjdfstest.rs; openssl and curl
# for the TLS case of tests/api_server.rs). With
# KMSFS_BENCH=1 also what scripts/bench.sh runs (gocryptfs, securefs, fio, bc, python3 to read
# fio's JSON, and linux-source-6.1 for the untar phase's tarball). Idempotent; a no-op when everything is present.
set -euo pipefail

packages=(fuse3 attr sqlite3 git xz-utils mount util-linux e2fsprogs tar openssl curl)
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

# A fresh container may lack the device node although the kernel has FUSE.
if [ ! -e /dev/fuse ] && [ "$(id -u)" -eq 0 ]; then
  mknod -m 0666 /dev/fuse c 10 229 || true
fi
[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing; kmsfs needs FUSE (modprobe fuse)" >&2; exit 1; }
