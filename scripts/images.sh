#!/usr/bin/env bash
# Container images of the operator and the trainer, built without a
# container daemon: buildah (Debian's package) with the vfs storage driver
# assembles each image from scratch out of the release binaries this
# checkout built, the shared libraries they load, and (trainer) libtorch with
# the CUDA/NCCL libraries of the PyPI torch wheel. Nothing is pulled from a
# registry and nothing runs inside the image while building, so neither a
# daemon nor user namespaces are needed.
#
#   scripts/images.sh build    build both (skipped when the binaries did not change)
#   scripts/images.sh smoke    unpack each image with umoci and run it in bubblewrap
#                              as the image's user on a read-only root filesystem
#   scripts/images.sh all      build, then smoke
#   scripts/images.sh tag      print the tag (crate version) and the full tag (+ commit)
#
# Output under $RIDE_IMAGES_DIR (default ~/.cache/ride/images):
#   ride-operator.oci/, ride-trainer.oci/   OCI image layouts, refs TAG and TAG-gCOMMIT
#   ride-operator-TAG.tar, ride-trainer-TAG.tar   docker-archive tarballs (`docker load -i`)
# and the unpacked root filesystems (smoke; the tests' node agents run them) in
# $RIDE_IMAGE_ROOTFS/NAME (default /tmp/ride-images/rootfs: the images' users
# must be able to reach them, which they cannot under /root).
# Push: skopeo copy oci:$RIDE_IMAGES_DIR/ride-trainer.oci:TAG docker://REGISTRY/ride-trainer:TAG
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
repo="$(cd "$here/.." && pwd)"
OUT="${RIDE_IMAGES_DIR:-$RIDE_CACHE/images}"
ROOTFS="${RIDE_IMAGE_ROOTFS:-/tmp/ride-images/rootfs}"
REGISTRY="${RIDE_IMAGE_REGISTRY:-ghcr.io/ride-on-cluster}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)"
REVISION="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REVISION="$REVISION-dirty"
fi
TAG="$VERSION"
FULL_TAG="$VERSION-g$REVISION"
# Layer file times and the image's creation time: the commit's time, so the
# same commit and binaries give the same image digest.
EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
BIN="$CARGO_TARGET_DIR/release"
SITE="$("$RIDE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
B=(buildah --root "$OUT/storage" --runroot "$OUT/run" --storage-driver vfs)

install_tools() {
  local missing=()
  for t in buildah:buildah umoci:umoci skopeo:skopeo bwrap:bubblewrap patchelf:patchelf; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ ${#missing[@]} = 0 ] && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]}; run: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Copy ELF files' shared libraries (as ldd resolves them on this machine)
# into ROOT at the same paths, skipping those under the prefixes that follow.
copy_libs() {
  local root="$1" elf="$2"
  shift 2
  local lib skip p
  while read -r lib; do
    [ -n "$lib" ] || continue
    skip=0
    for p in "$@"; do
      [[ "$lib" == "$p"* ]] && skip=1
    done
    [ "$skip" = 1 ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$elf" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]*ld-linux/{print $1}' | sort -u)
}

# /etc/passwd and /etc/group with root and the image's user, a world-writable
# /tmp, empty /proc and /dev mount points, CA certificates.
base_files() {
  local root="$1" user="$2" uid="$3" home="$4"
  mkdir -p "$root/etc" "$root/proc" "$root/dev" "$root/tmp" "$root/mnt" "$root$home" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:%s:/sbin/nologin\n' "$user" "$uid" "$uid" "$user" "$home" > "$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" > "$root/etc/group"
  chown "$uid:$uid" "$root$home"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

# What an image is made of besides the libraries: the binaries, this
# script, and (trainer) the configs.
binaries_hash() {
  cat "$@" "$here/images.sh" | sha256sum | cut -c1-64
}

# Is NAME's layout already at TAG with these binaries (label dev.ride.binaries)?
up_to_date() {
  local name="$1" hash="$2"
  [ -d "$OUT/$name.oci" ] || return 1
  skopeo inspect --config "oci:$OUT/$name.oci:$FULL_TAG" 2>/dev/null | grep -q "\"dev.ride.binaries\": \"$hash\""
}

# Commit container CTR as NAME: OCI layout refs TAG and FULL_TAG, and a
# docker-archive named REGISTRY/NAME:TAG.
commit() {
  local ctr="$1" name="$2" hash="$3"
  "${B[@]}" config \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$FULL_TAG" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.source=https://github.com/ride-on-cluster/ride-on-cluster" \
    --label "dev.ride.binaries=$hash" \
    "$ctr"
  rm -rf "$OUT/$name.oci" "$OUT/$name-$TAG.tar"
  # Compressed (gzip) layers, as a registry stores and serves them.
  "${B[@]}" commit --quiet --format oci --disable-compression=false --timestamp "$EPOCH" --rm \
    "$ctr" "oci:$OUT/$name.oci:$TAG" >/dev/null
  skopeo copy --quiet "oci:$OUT/$name.oci:$TAG" "oci:$OUT/$name.oci:$FULL_TAG"
  skopeo copy --quiet "oci:$OUT/$name.oci:$TAG" "docker-archive:$OUT/$name-$TAG.tar:$REGISTRY/$name:$TAG"
}

build_operator() {
  local hash
  hash="$(binaries_hash "$BIN/ride-operator" "$BIN/ride")"
  if up_to_date ride-operator "$hash"; then
    echo "ride-operator:$TAG is up to date"
    return
  fi
  echo "==> building ride-operator:$TAG ($FULL_TAG)"
  local ctr mnt
  ctr="$("${B[@]}" from --quiet scratch)"
  mnt="$("${B[@]}" mount "$ctr")"
  mkdir -p "$mnt/usr/local/bin"
  install -m 0755 "$BIN/ride-operator" "$BIN/ride" "$mnt/usr/local/bin/"
  copy_libs "$mnt" "$BIN/ride-operator"
  copy_libs "$mnt" "$BIN/ride"
  base_files "$mnt" nonroot 65532 /home/nonroot
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --entrypoint '["/usr/local/bin/ride-operator"]' --cmd '[]' "$ctr"
  commit "$ctr" ride-operator "$hash"
}

# The trainer's first layer: libtorch and the CUDA libraries in the wheel's
# layout, and the system libraries the binary needs. Kept in buildah's
# storage by the wheel's version, so rebuilding the binary reuses it.
trainer_libs_image() {
  local torch="$SITE/torch/lib" nvidia="$SITE/nvidia" lib=/opt/ride/python
  local version image
  version="$("$RIDE_VENV/bin/python" -c 'import torch; print(torch.__version__.replace("+", "-"))')"
  image="localhost/ride-trainer-libs:torch-$version"
  if "${B[@]}" inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    return
  fi
  echo "==> copying libtorch and the CUDA libraries (~3.6 GB) into $image" >&2
  local ctr mnt
  ctr="$("${B[@]}" from --quiet scratch)"
  mnt="$("${B[@]}" mount "$ctr")"
  # The wheel's layout is kept (torch/lib next to nvidia/*/lib): libtorch_cuda
  # finds the CUDA libraries through its $ORIGIN/../../nvidia/... rpaths.
  # libtorch_python is Python's binding and not needed.
  mkdir -p "$mnt$lib/torch/lib" "$mnt$lib/nvidia"
  find "$torch" -maxdepth 1 -name '*.so*' ! -name 'libtorch_python.so' -exec cp -L {} "$mnt$lib/torch/lib/" \;
  (cd "$nvidia" && find . -path '*/lib/*' -name '*.so*' -exec cp -L --parents {} "$mnt$lib/nvidia/" \;)
  copy_libs "$mnt" "$BIN/ride-trainer" "$torch" "$nvidia"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" commit --quiet --timestamp "$EPOCH" --rm "$ctr" "$image" >/dev/null
  echo "$image"
}

build_trainer() {
  local hash
  local configs
  mapfile -t configs < <(find "$repo/configs" -type f | LC_ALL=C sort)
  hash="$(binaries_hash "$BIN/ride-trainer" "${configs[@]}")"
  if up_to_date ride-trainer "$hash"; then
    echo "ride-trainer:$TAG is up to date"
    return
  fi
  echo "==> building ride-trainer:$TAG ($FULL_TAG)"
  local libs ctr mnt
  libs="$(trainer_libs_image)"
  ctr="$("${B[@]}" from --quiet "$libs")"
  mnt="$("${B[@]}" mount "$ctr")"
  mkdir -p "$mnt/usr/local/bin"
  install -m 0755 "$BIN/ride-trainer" "$mnt/usr/local/bin/ride-trainer"
  # The build's rpath points into this machine's venv; the image's into itself.
  patchelf --set-rpath /opt/ride/python/torch/lib "$mnt/usr/local/bin/ride-trainer"
  mkdir -p "$mnt/opt/ride"
  rm -rf "$mnt/opt/ride/configs"
  cp -r "$repo/configs" "$mnt/opt/ride/configs"
  base_files "$mnt" ride 1000 /home/ride
  "${B[@]}" umount "$ctr" >/dev/null
  # Read-only root filesystem: everything the trainer writes goes to /tmp
  # (HOME, temporary checkpoint files, a relative OUTPUT) or to the output
  # URI; pods mount an emptyDir there, and so does `docker run` (VOLUME).
  "${B[@]}" config --user 1000:1000 --workingdir /tmp \
    --env PATH=/usr/local/bin --env HOME=/tmp --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --volume /tmp --entrypoint '["/usr/local/bin/ride-trainer"]' --cmd '["--help"]' "$ctr"
  commit "$ctr" ride-trainer "$hash"
}

report() {
  local name
  for name in ride-operator ride-trainer; do
    local layout="$OUT/$name.oci"
    [ -d "$layout" ] || continue
    local compressed uncompressed
    compressed="$(du -sb "$layout/blobs" | cut -f1)"
    uncompressed="$(stat -c %s "$OUT/$name-$TAG.tar")"
    printf '%-14s %-28s compressed %7.1f MB  uncompressed %7.1f MB\n' "$name" "$FULL_TAG" \
      "$(echo "$compressed / 1000000" | bc -l)" "$(echo "$uncompressed / 1000000" | bc -l)"
  done
}

# Unpack NAME into $ROOTFS/NAME (umoci, from the layout, as a registry would
# serve it).
unpack() {
  local name="$1" bundle="$ROOTFS/.bundle-$1"
  mkdir -p "$ROOTFS"
  chmod 0755 "$ROOTFS"
  rm -rf "$bundle" "${ROOTFS:?}/$name"
  umoci unpack --image "$OUT/$name.oci:$TAG" "$bundle" >/dev/null
  mv "$bundle/rootfs" "$ROOTFS/$name"
  chmod 0755 "$ROOTFS/$name"
  rm -rf "$bundle"
}

# Run ARGS in the unpacked image NAME as UID:GID, on the host as well (setpriv
# drops to it before bubblewrap builds the sandbox): read-only root, private
# /tmp, /proc and /dev, the image's environment, no capabilities.
# $RIDE_IMAGE_BINDS: extra "HOST:CONTAINER" read-write binds, space-separated,
# with CONTAINER under /mnt (a tmpfs, where the mount points can be made).
run_image() {
  local name="$1" uid="$2" gid="$3"
  shift 3
  local binds=() b
  for b in ${RIDE_IMAGE_BINDS:-}; do
    binds+=(--bind "${b%%:*}" "${b#*:}")
  done
  setpriv --reuid="$uid" --regid="$gid" --clear-groups \
    bwrap --ro-bind "$ROOTFS/$name" / --proc /proc --dev /dev --tmpfs /tmp --tmpfs /mnt \
    "${binds[@]}" --unshare-pid --unshare-ipc --unshare-uts --die-with-parent \
    --uid "$uid" --gid "$gid" --unshare-user --cap-drop ALL --clearenv \
    --setenv PATH /usr/local/bin --setenv HOME /tmp --chdir /tmp "$@"
}

smoke() {
  unpack ride-operator
  unpack ride-trainer
  echo "--- ride-operator --help (uid 65532)"
  run_image ride-operator 65532 65532 /usr/local/bin/ride-operator --help | head -5
  echo "--- ride crd | head -3 (uid 65532)"
  run_image ride-operator 65532 65532 /usr/local/bin/ride crd | head -3
  echo "--- ride-trainer summary (uid 1000)"
  run_image ride-trainer 1000 1000 /usr/local/bin/ride-trainer summary \
    --cfg /opt/ride/configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml | tail -6
  local ckpt
  ckpt="$(mktemp -d "${TMPDIR:-/tmp}/ride-image-ckpt.XXXXXX")"
  chmod 0777 "$ckpt"
  echo "--- one CPU epoch on synthetic data, checkpoint to file:///mnt/ckpt (uid 1000)"
  RIDE_IMAGE_BINDS="$ckpt:/mnt/ckpt" run_image ride-trainer 1000 1000 /usr/local/bin/ride-trainer train \
    --cfg /opt/ride/configs/synthetic_ride_2e_cpu.yaml --device cpu --output file:///mnt/ckpt \
    --metrics-addr off --no-progress --opts TRAIN.EPOCHS 1 DATA.SYNTHETIC.MAX_PER_CLASS 60 | tail -12
  find "$ckpt" -name latest | grep -q . || { echo "error: no checkpoint written to the volume" >&2; exit 1; }
  echo "checkpoint on the volume: $(find "$ckpt" -name latest -printf '%h\n' | head -1 | sed "s|$ckpt|/mnt/ckpt|") (owner uid $(stat -c %u "$(find "$ckpt" -name latest | head -1)"))"
  echo "--- what the trainer image holds (MB)"
  (cd "$ROOTFS/ride-trainer" && du -sm opt/ride/python/nvidia/* opt/ride/python/torch/lib \
    usr/local/bin/ride-trainer lib* etc opt/ride/configs) | sort -rn
  rm -rf "$ckpt"
}

case "${1:-}" in
  build)
    install_tools
    mkdir -p "$OUT"
    build_operator
    build_trainer
    report
    ;;
  smoke)
    install_tools
    smoke
    ;;
  all)
    "$0" build
    "$0" smoke
    ;;
  tag)
    echo "$TAG $FULL_TAG"
    ;;
  *)
    echo "usage: $0 build|smoke|all|tag" >&2
    exit 2
    ;;
esac
