#!/bin/bash
# Builds a DUMMY edgedx_0~dummy_arm64.deb for developing tests/boot without the real
# package: a shell script stands in for /usr/bin/edgedx (it opens and pets the watchdog,
# notifies systemd and disarms on SIGTERM) with the repository's unit, sysusers, tmpfiles
# and udev files. The checks that need the real daemon (classify, outbox) fail with it.
#
#   tests/boot/dummy-deb.sh OUT_DIR
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
out=${1:?usage: dummy-deb.sh OUT_DIR}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/usr/lib/udev/rules.d" "$root/etc/edgedx" \
    "$root/usr/share/edgedx/profiles" "$root/usr/share/edgedx/bundles/default"
cat > "$root/usr/bin/edgedx" <<'EOF'
#!/bin/bash
# DUMMY edgedx (tests/boot/dummy-deb.sh)
exec 9>/dev/watchdog0 || exit 1
echo "dummy edgedx: watchdog armed"
trap 'printf V >&9; exec 9>&-; echo "watchdog /dev/watchdog0 disarmed"; systemd-notify STOPPING=1; exit 0' TERM
systemd-notify --ready
while :; do printf x >&9; systemd-notify WATCHDOG=1; sleep 3 & wait $!; done
EOF
printf '#!/bin/sh\necho "DUMMY edgedx-ctl"; exit 1\n' > "$root/usr/bin/edgedx-ctl"
chmod 0755 "$root/usr/bin/edgedx" "$root/usr/bin/edgedx-ctl"
# A shell script cannot notify from the main PID itself.
sed 's/^NotifyAccess=main/NotifyAccess=all/' "$REPO/board/systemd/edgedx.service" \
    > "$root/usr/lib/systemd/system/edgedx.service"
cp "$REPO/board/systemd/edgedx.sysusers" "$root/usr/lib/sysusers.d/edgedx.conf"
cp "$REPO"/board/systemd/edgedx.tmpfile* "$root/usr/lib/tmpfiles.d/edgedx.conf"
cp "$REPO/board/systemd/99-edgedx.rules" "$root/usr/lib/udev/rules.d/60-edgedx.rules"
cp "$REPO"/board/profiles/*.toml "$root/usr/share/edgedx/profiles/"
cp "$REPO/models/brain-mri-4class/manifest.toml" "$root/usr/share/edgedx/bundles/default/"
cp "$REPO/board/deb/edgedx.toml" "$root/etc/edgedx/edgedx.toml"
echo /etc/edgedx/edgedx.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<'EOF'
Package: edgedx
Version: 0~dummy
Architecture: arm64
Maintainer: tests/boot <nobody@example.invalid>
Depends: systemd
Description: DUMMY edgedx package for developing tests/boot
EOF
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
systemd-sysusers edgedx.conf
systemd-tmpfiles --create edgedx.conf
deb-systemd-helper enable edgedx.service
EOF
chmod 0755 "$root/DEBIAN/postinst"
dpkg-deb --root-owner-group -Zxz -b "$root" "$out/edgedx_0~dummy_arm64.deb"
