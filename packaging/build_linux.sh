#!/usr/bin/env bash
# The Linux installers in one go (`make package` runs this):
#   OUT/glassbox/                                the PyInstaller one-folder bundle
#   OUT/glassbox-VERSION-linux-ARCH.tar.gz       that folder, to unpack anywhere and run glassbox/glassbox
#   OUT/glassbox_VERSION_ARCH.deb                built by make_deb.sh with dpkg-deb
# Usage: packaging/build_linux.sh [OUT_DIR (default dist)] [--no-tar]
# PyInstaller's work files go to OUT/.work (kept: a rebuild reuses its analysis cache).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/dist"}; tar_too=1
[[ "${2:-}" == "--no-tar" ]] && tar_too=0
mkdir -p "$out"; out=$(realpath "$out")
py="$root/.venv/bin/python"
version=$("$py" -c "import tomllib; print(tomllib.load(open('$root/pyproject.toml', 'rb'))['project']['version'])")
arch=$(uname -m)

start=$SECONDS
"$py" -m PyInstaller --noconfirm --log-level WARN --distpath "$out" --workpath "$out/.work" \
    "$root/packaging/glassbox.spec"
echo "bundle: $out/glassbox ($(du -sm "$out/glassbox" | cut -f1) MB, $((SECONDS - start)) s)"

if (( tar_too )); then
    tarball="$out/glassbox-$version-linux-$arch.tar.gz"
    tar -C "$out" -cf - glassbox | gzip -1 > "$tarball"
    echo "tar.gz: $tarball ($(du -sm "$tarball" | cut -f1) MB)"
fi
deb=$("$root/packaging/make_deb.sh" "$out/glassbox" "$out" "$version")
echo "deb:    $deb ($(du -sm "$deb" | cut -f1) MB, $((SECONDS - start)) s in all)"
