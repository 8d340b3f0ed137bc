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
  libvirt-daemon-system qemu-system-x86 qemu-utils libvirt-dev pkg-config gcc
  python3-venv python3-dev
  spice-client-gtk virt-viewer xvfb xauth imagemagick x11-utils
  postgresql chromium
  libxml2-dev libcurl4-openssl-dev libssl-dev   # build ovirt-engine-sdk-python (and its pycurl)
  # The demo guest (scripts/build-guest.sh) and reading its screen back (OCR)
  busybox-static syslinux syslinux-common isolinux mtools dosfstools fdisk e2fsprogs cpio
  xorriso kbd console-data qemu-utils tesseract-ocr tesseract-ocr-eng
  xdotool   # keys typed into remote-viewer's window (tests/integration/test_typing_every_client.py)
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

# SPICE over TLS: libvirt gives SPICE a tlsPort only with spice_tls = 1, and QEMU then
# needs ca-cert.pem, server-cert.pem and server-key.pem in the cert dir at every VM start.
# Until the agent enrols (and writes certificates from the engine's CA there), a
# self-signed placeholder lets SPICE start. QEMU runs as libvirt-qemu:kvm: group kvm reads.
SPICE_DIR=/etc/pki/libvirt-spice
QEMU_CONF=/etc/libvirt/qemu.conf
if [ -f "$QEMU_CONF" ]; then
  if ! grep -Eq '^[[:space:]]*spice_tls[[:space:]]*=[[:space:]]*1[[:space:]]*$' "$QEMU_CONF"; then
    sed -i -E '/^[[:space:]]*spice_tls[[:space:]]*=/d' "$QEMU_CONF"
    echo 'spice_tls = 1' >>"$QEMU_CONF"
  fi
  if ! grep -Eq "^[[:space:]]*spice_tls_x509_cert_dir[[:space:]]*=[[:space:]]*\"$SPICE_DIR\"" "$QEMU_CONF"; then
    sed -i -E '/^[[:space:]]*spice_tls_x509_cert_dir[[:space:]]*=/d' "$QEMU_CONF"
    echo "spice_tls_x509_cert_dir = \"$SPICE_DIR\"" >>"$QEMU_CONF"
  fi
fi
install -d -m 0750 -o root -g kvm "$SPICE_DIR"
if [ ! -s "$SPICE_DIR/server-cert.pem" ] || [ ! -s "$SPICE_DIR/server-key.pem" ] || [ ! -s "$SPICE_DIR/ca-cert.pem" ]; then
  command -v openssl >/dev/null || apt-get install -y -qq --no-install-recommends openssl >/dev/null
  tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/O=multiconsole/CN=placeholder $(hostname)" -keyout "$tmp/server-key.pem" \
    -out "$tmp/server-cert.pem" 2>/dev/null
  cp "$tmp/server-cert.pem" "$tmp/ca-cert.pem"
  chown root:kvm "$tmp"/*.pem && chmod 0640 "$tmp/server-key.pem" && chmod 0644 "$tmp"/*-cert.pem
  mv -f "$tmp"/*.pem "$SPICE_DIR"/ && rmdir "$tmp"
fi

# Daemons without systemd: virtlogd first (QEMU's stdio goes through it), then libvirtd.
pgrep -x virtlogd >/dev/null || virtlogd -d
# A libvirtd started before qemu.conf last changed has not read it (spice_tls): restart it
# (running domains survive).
pid=$(pgrep -x libvirtd | head -n 1 || true)
if [ -n "$pid" ] && [ -f "$QEMU_CONF" ]; then
  started=$(($(date +%s) - $(ps -o etimes= -p "$pid")))
  if [ "$(stat -c %Y "$QEMU_CONF")" -gt "$started" ]; then
    echo "setup: restarting libvirtd (qemu.conf changed)"
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
fi
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 600); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null

# PostgreSQL for the engine's tests (and multi-host installations): Debian's cluster,
# a role and a database of our own. SQLite needs nothing.
if [ "${MULTICONSOLE_NO_POSTGRES:-0}" != 1 ]; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)
  if [ -n "$ver" ]; then
    pg_lsclusters -h | awk '{print $4}' | grep -q online || pg_ctlcluster "$ver" main start
    for _ in $(seq 1 100); do su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break; sleep 0.1; done
    su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='multiconsole'\"" | grep -q 1 ||
      su postgres -c "psql -qc \"create role multiconsole login createdb password 'multiconsole'\""
    su postgres -c "psql -qAtc \"select 1 from pg_database where datname='multiconsole_test'\"" | grep -q 1 ||
      su postgres -c "createdb -O multiconsole multiconsole_test"
  fi
fi

# Browser assets (noVNC) from the npm registry, served by the engine.
if ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d node_modules/@novnc/novnc ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing noVNC (npm)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

# Python side: the venv and the project (editable) with its test extras.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: installing Python packages into $VENV"
  # Quiet unless it fails: then show what pip said.
  log=$(mktemp)
  if ! { "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e '.[test]'; } >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$STAMP"
fi

# The demo guest image (Debian kernel + busybox, bootable disk and ISO), rebuilt only
# when its inputs change: /var/cache/multiconsole/guest/tiny-linux.{img,iso}.
scripts/build-guest.sh
