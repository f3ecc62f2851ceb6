#!/usr/bin/env bash
# open3d needs the system library libusb-1.0. Install it with apt when we are root,
# otherwise say what to install. Quiet when it is already there.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing libusb-1.0-0 (needed by open3d) with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq libusb-1.0-0 >/dev/null
else
  echo "WARNING: libusb-1.0 is missing and open3d will not import." >&2
  echo "         Install it: sudo apt-get install libusb-1.0-0" >&2
fi
