#!/bin/sh
# Builds the Unigate image FROM scratch from binaries in DIST (make dist).
#   sh deploy/docker/build.sh [DIST] [IMAGE] [ARCH]
# ARCH defaults to the host's; for another one (arm64, loong64) the builder
# needs no emulation: nothing runs at build time. BUILDER is the command
# whose "build" subcommand builds it: docker (the default), or buildah,
# which needs no daemon (BUILDER=buildah).
set -eu
dist=${1:-dist}
image=${2:-unigate:dev}
arch=${3:-$(go env GOARCH)}
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/linux-$arch" "$ctx/rootfs/etc/unigate" "$ctx/rootfs/data"
cp "$here/unigate.yaml" "$ctx/rootfs/etc/unigate/unigate.yaml"
cp "$dist/linux-$arch/unigate" "$ctx/linux-$arch/unigate"
echo 'unigate:x:65532:65532:Unigate gateway:/data:/nonexistent' > "$ctx/rootfs/etc/passwd"
echo 'unigate:x:65532:' > "$ctx/rootfs/etc/group"
chmod 0700 "$ctx/rootfs/data"
${BUILDER:-docker} build --platform "linux/$arch" --build-arg "TARGETARCH=$arch" -t "$image" -f "$here/Dockerfile" "$ctx"
