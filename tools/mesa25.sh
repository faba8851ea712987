#!/bin/sh
# Mesa 25.0's lavapipe, a second Vulkan driver to run the tests on (make test-mesa25), without installing it:
# downloads mesa-vulkan-drivers and the libdrm it needs from Debian bookworm-backports with apt-get download
# (a private package list under build/mesa25, the system's apt configuration untouched), extracts them into
# build/mesa25/root, and writes build/mesa25/lvp_icd.json with the absolute library_path.
# Use: VK_ICD_FILENAMES=$PWD/build/mesa25/lvp_icd.json LD_LIBRARY_PATH=$PWD/build/mesa25/root/usr/lib/x86_64-linux-gnu
# Prints the two variables (eval-able) on success. Takes ~30 s the first time; nothing the second.
set -eu
cd "$(dirname "$0")/.."
OUT="$PWD/build/mesa25"
SUITE="${MESA25_SUITE:-bookworm-backports}"
VERSION="${MESA25_VERSION:-25.0}"
ARCH="$(dpkg --print-architecture)"
MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
LIB="$OUT/root/usr/lib/$MULTIARCH"
if [ ! -f "$OUT/lvp_icd.json" ]; then
    mkdir -p "$OUT/apt/lists/partial" "$OUT/apt/cache/archives/partial" "$OUT/debs" "$OUT/root"
    echo "deb http://deb.debian.org/debian $SUITE main" > "$OUT/apt/sources.list"
    APT="-o Dir::Etc::SourceList=$OUT/apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$OUT/apt/lists
         -o Dir::Cache=$OUT/apt/cache -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 -o APT::Sandbox::User=$(id -un)"
    # shellcheck disable=SC2086
    apt-get -qq $APT update
    # The packages whose newer versions Mesa 25 needs; everything else it links (LLVM 15, libxcb...) is bookworm's.
    for p in mesa-vulkan-drivers libdrm2 libdrm-amdgpu1; do
        # shellcheck disable=SC2086
        v="$(apt-cache $APT madison "$p" | awk -v s="$SUITE" '$0 ~ s {print $3; exit}')"
        [ -n "$v" ] || { echo "mesa25.sh: $p is not in $SUITE" >&2; exit 1; }
        case "$p" in mesa-vulkan-drivers) case "$v" in "$VERSION".*) ;; *) echo "mesa25.sh: $SUITE has Mesa $v, not $VERSION" >&2; exit 1;; esac;; esac
        # shellcheck disable=SC2086
        (cd "$OUT/debs" && apt-get -qq $APT download "$p:$ARCH=$v")
    done
    for d in "$OUT"/debs/*.deb; do dpkg-deb -x "$d" "$OUT/root"; done
    [ -f "$LIB/libvulkan_lvp.so" ] || { echo "mesa25.sh: no libvulkan_lvp.so in the packages" >&2; exit 1; }
    cat > "$OUT/lvp_icd.json" <<JSON
{
    "ICD": {
        "api_version": "1.4.305",
        "library_path": "$LIB/libvulkan_lvp.so"
    },
    "file_format_version": "1.0.0"
}
JSON
fi
echo "VK_ICD_FILENAMES=$OUT/lvp_icd.json"
echo "LD_LIBRARY_PATH=$LIB"
