#!/bin/sh
# PID 1 of the rootfs build's single boot (tests/boot/run.sh): debootstrap's second stage
# inside the emulated arm64 machine (this host has no binfmt_misc, so arm64 maintainer
# scripts can only run here), then the test VM's base configuration. Prints @@STAGE2-OK
# or @@STAGE2-FAIL on the console and powers the machine off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

finish() {
    status=$?
    sync
    if [ "$status" -eq 0 ]; then echo "@@STAGE2-OK"; else echo "@@STAGE2-FAIL exit $status"; fi
    mount -o remount,ro / || true
    sync
    echo o > /proc/sysrq-trigger
    sleep 60
}
trap finish EXIT
set -eux
# The build initramfs moved /dev and /sys here; mount what is missing.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev

# The VM boots with tests/boot's own initramfs (guest/initramfs-init). initramfs-tools is
# installed because the kernel package needs an initramfs generator, but its run from the
# kernel's postinst is skipped (INITRD=No, honoured by its /etc/kernel/postinst.d hook):
# under software emulation it took over 15 minutes.
export INITRD=No

date
/debootstrap/debootstrap --second-stage
date

echo edgedx-vm > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tedgedx-vm\n' > /etc/hosts
printf 'LABEL=edgedx-root\t/\text4\trw,errors=remount-ro\t0\t1\n' > /etc/fstab
# A test VM without network: root may log in on the console without a password (for
# debugging by hand, see tests/boot/README.md).
passwd -d root
# The host drives the tests through this agent (a virtio serial port).
systemctl enable boot-test-agent.service
# Nothing periodic may run during a test.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    systemctl disable "$t" 2>/dev/null || true
done

kver=$(cd /lib/modules && ls)
test -f "/boot/vmlinuz-$kver"
test -f "/lib/modules/$kver/modules.dep"
ls -l /boot
apt-get clean
rm -f /edgedx-stage2.sh
