#!/bin/bash
# Runs in the test VM during its install boot (tests/boot/run.sh), from the data disk
# mounted at $1: installs the edgedx package offline as on a board, then makes the
# guest-only changes that stand in for the board's hardware. Each change says why.
set -euo pipefail
data=$1
deb=$(ls "$data"/edgedx_*_arm64.deb)
step() { printf '\n== %s\n' "$*"; }

step "install $(basename "$deb") (offline)"
cp "$deb" /var/cache/
DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y --no-install-recommends \
    "/var/cache/$(basename "$deb")" 2>&1
rm -f "/var/cache/$(basename "$deb")"
dpkg -s edgedx | grep -E '^(Version|Depends|Recommends)' || true
# A first install enables edgedx but must not start it (the profile is not set yet).
echo "edgedx after install: $(systemctl is-enabled edgedx.service), $(systemctl is-active edgedx.service)"

step "what the package installed"
missing=0
for f in /usr/bin/edgedx /usr/bin/edgedx-ctl /usr/lib/systemd/system/edgedx.service \
    /etc/edgedx/edgedx.toml /usr/share/edgedx/bundles/default; do
    if [ -e "$f" ]; then ls -ld "$f"; else echo "MISSING: $f"; missing=1; fi
done
dpkg -L edgedx | grep -E 'sysusers|tmpfiles|udev|profiles/|bundles/default/' || true
id edgedx
systemctl is-enabled -q edgedx.service || { echo "edgedx.service is not enabled by the postinst"; missing=1; }
[ "$missing" = 0 ] || exit 3

step "the VM's board profile"
install -m 0640 -o root -g edgedx "$data/board.toml" /etc/edgedx/board.toml
grep -c '^profile *=' /etc/edgedx/edgedx.toml | grep -qx 1 ||
    { echo "/etc/edgedx/edgedx.toml has no single 'profile = ...' line"; exit 3; }
sed -i 's|^profile *=.*|profile = "/etc/edgedx/board.toml"|' /etc/edgedx/edgedx.toml
grep -n '^profile' /etc/edgedx/edgedx.toml

step "guest-only changes"
# The link is a virtio console: the unit's DevicePolicy=closed must allow it.
install -D -m 0644 "$data/edgedx-boot-test.conf" /etc/systemd/system/edgedx.service.d/boot-test.conf
grep -w hvc /proc/devices
# ... and edgedx (group dialout) must be able to open it.
install -m 0644 "$data/99-edgedx-boot-test.rules" /etc/udev/rules.d/99-edgedx-boot-test.rules
# systemd-getty-generator starts a login on hvc0 in VMs; on a board the link's getty is
# masked too (board/README.md, "The serial link is free").
systemctl mask serial-getty@hvc0.service
# A spool directory, standing for a USB drive mounted there (board/edgedx.example.toml):
# the test drops an image into it to make a result that no host acknowledges. The
# packaged conffile has no [spool]; the drop-in above lets edgedx move spooled files to
# done/ (ProtectSystem=strict makes everything else read-only to it).
if ! grep -q '^\[spool\]' /etc/edgedx/edgedx.toml; then
    printf '\n# Added by tests/boot (guest only).\n[spool]\ndir = "/media/edgedx-usb"\n' >> /etc/edgedx/edgedx.toml
fi
install -d -m 2770 -o root -g edgedx /media/edgedx-usb
# Sample images for the checks.
install -d /var/lib/boot-test
cp "$data"/samples/* /var/lib/boot-test/
systemctl daemon-reload
systemctl cat edgedx.service | grep -E '^(# /|After|Wants|DeviceAllow|ReadWritePaths|Type|Watchdog|MemoryMax|SystemCall)'
