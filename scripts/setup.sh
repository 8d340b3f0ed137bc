#!/usr/bin/env bash
# Installs everything multiconsole needs on Debian 12 as root, idempotently:
# Debian packages (libvirt + QEMU + the console clients the tests use), the
# virtualenv at .venv, and the libvirt daemons (there is no systemd here).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
VENV=${VENV:-.venv}
STAMP=.venv/.setup-stamp

APT_PACKAGES=(
  libvirt-daemon-system qemu-system-x86 libvirt-dev pkg-config gcc
  python3-venv python3-dev
  spice-client-gtk virt-viewer xvfb xauth imagemagick x11-utils
)

need_apt=0
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || { need_apt=1; break; }
done
if [ "$need_apt" = 1 ]; then
  echo "setup: installing Debian packages (about a minute)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

# No udev: /dev/kvm stays root-only, so QEMU (libvirt-qemu:kvm) cannot open it and
# every define re-probes capabilities. Fix it before libvirtd starts.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true
fi

# Daemons without systemd: virtlogd first (QEMU's stdio goes through it), then libvirtd.
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 600); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null

# Python side: the venv and the project (editable) with its test extras.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: installing Python packages into $VENV"
  # pip's configured mirrors that do not exist here only warn: keep them out of the way.
  quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; return "${PIPESTATUS[0]}"; }
  quiet "$VENV/bin/pip" install -q --upgrade pip
  quiet "$VENV/bin/pip" install -q -e '.[test]'
  touch "$STAMP"
fi
