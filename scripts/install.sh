#!/usr/bin/env bash
# Installs kmsfs so that /etc/fstab lines and systemd units mount volumes (docs/BOOT.md):
#
#   $PREFIX/bin/kmsfs                              the binary (PREFIX=/usr/local)
#   /sbin/mount.fuse.kmsfs -> $PREFIX/bin/kmsfs    the mount(8) helper for type fuse.kmsfs
#   /etc/kmsfs, /var/lib/kmsfs                     mode 0700, for the passphrase file and
#                                                  the keystore of boot-time mounts
#   /etc/systemd/system/kmsfs@.service             only with --systemd
#
# mount(8) looks for helpers only in /sbin, /sbin/fs.d and /sbin/fs (util-linux's helper
# search path; /usr/local/sbin is not on it), hence the symlink in /sbin (on merged-/usr
# systems that is /usr/sbin). Without the symlink mount(8) still works, through fuse3's
# mount.fuse3, which runs `kmsfs` from mount's PATH ($PREFIX/bin is on it for /usr/local);
# the helper saves that detour through /bin/sh and mount.fuse3's own option rewriting.
#
# usage: scripts/install.sh [--binary PATH] [--systemd] [--uninstall]
#   --binary PATH   install this binary instead of building one (cargo build --release)
#   --systemd       also install docs/systemd/kmsfs@.service
#   --uninstall     remove what this script installs (not /etc/kmsfs or /var/lib/kmsfs)
#   DESTDIR=DIR     stage everything under DIR (packaging)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
binary=""
systemd=0
uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --systemd) systemd=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

bin="$PREFIX/bin/kmsfs"
helper="/sbin/mount.fuse.kmsfs"
unit="/etc/systemd/system/kmsfs@.service"

if [ "$uninstall" = 1 ]; then
  rm -f "$DESTDIR$helper" "$DESTDIR$bin" "$DESTDIR$unit"
  echo "removed $helper, $bin and $unit (kept /etc/kmsfs and /var/lib/kmsfs)"
  exit 0
fi

if [ -z "$binary" ]; then
  cargo build --release
  binary=target/release/kmsfs
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -D -m 0755 "$binary" "$DESTDIR$bin"
install -d -m 0755 "$DESTDIR$(dirname "$helper")"
ln -sfn "$bin" "$DESTDIR$helper"
install -d -m 0700 "$DESTDIR/etc/kmsfs" "$DESTDIR/var/lib/kmsfs"
echo "installed $bin and $helper -> $bin"

if [ "$systemd" = 1 ]; then
  install -d -m 0755 "$DESTDIR$(dirname "$unit")"
  sed "s|/usr/local/bin/kmsfs|$bin|g" docs/systemd/kmsfs@.service > "$DESTDIR$unit"
  chmod 0644 "$DESTDIR$unit"
  echo "installed $unit (systemctl daemon-reload; see docs/BOOT.md)"
fi

if [ -z "$DESTDIR" ] && ! command -v fusermount3 >/dev/null; then
  echo "note: fusermount3 is missing; install fuse3 (apt-get install fuse3)" >&2
fi
