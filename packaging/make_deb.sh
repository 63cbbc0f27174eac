#!/usr/bin/env bash
# Build glassbox_VERSION_ARCH.deb from a PyInstaller one-folder bundle with dpkg-deb:
#   /opt/glassbox/          the bundle (its own Python, Qt, torch and the default model)
#   /usr/bin/glassbox       a relative symlink to /opt/glassbox/glassbox (works in any install root)
#   /usr/share/applications/glassbox.desktop, /usr/share/icons/hicolor/scalable/apps/glassbox.svg
# Usage: packaging/make_deb.sh BUNDLE_DIR OUT_DIR VERSION
set -euo pipefail
bundle=$(realpath "$1"); out=$(realpath "$2"); version=$3
here=$(cd "$(dirname "$0")" && pwd)
arch=$(dpkg --print-architecture)
stage="$out/deb-root"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/opt" "$stage/usr/bin" "$stage/usr/share/applications" \
         "$stage/usr/share/icons/hicolor/scalable/apps"
# Hard links where possible: the bundle is ~900 MB and need not be copied twice.
cp -al "$bundle" "$stage/opt/glassbox" 2>/dev/null || cp -a "$bundle" "$stage/opt/glassbox"
ln -s ../../opt/glassbox/glassbox "$stage/usr/bin/glassbox"
install -m 644 "$here/glassbox.desktop" "$stage/usr/share/applications/glassbox.desktop"
install -m 644 "$here/../resources/icons/glassbox.svg" "$stage/usr/share/icons/hicolor/scalable/apps/glassbox.svg"
size_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size_kb/" \
    "$here/debian/control.in" > "$stage/DEBIAN/control"
# zstd at level 3: seconds to build; xz would save ~15% and take minutes on 2 cores.
deb="$out/glassbox_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zzstd -z3 --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb"
