#!/usr/bin/env bash
# Idempotent set-up: Python venv with the PyPI torch wheel (libtorch for tch),
# the Kubernetes components for the tests (RIDE_SETUP_K8S=1), then a release
# build of the workspace against it. Safe to run repeatedly.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
TORCH_VERSION=2.11.0

mkdir -p "$RIDE_CACHE"
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
# libjpeg-turbo's headers and static library: the trainer decodes JPEG crops
# through it (trainer/csrc/jpeg_region.c) and links it into its binaries.
if [ ! -f /usr/include/jpeglib.h ] || ! ls /usr/lib/*/libjpeg.a >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing libjpeg62-turbo-dev"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libjpeg62-turbo-dev >/dev/null
  else
    echo "error: libjpeg-turbo headers missing; run: sudo apt-get install libjpeg62-turbo-dev" >&2
    exit 1
  fi
fi
if [ ! -x "$RIDE_VENV/bin/python" ]; then
  echo "==> creating virtual environment $RIDE_VENV"
  python3 -m venv "$RIDE_VENV"
fi
have=$("$RIDE_VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "==> installing torch==$TORCH_VERSION into $RIDE_VENV (about a minute, ~4.6 GB)"
  "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q "torch==$TORCH_VERSION"
fi
"$RIDE_VENV/bin/python" -c "import numpy" 2>/dev/null || "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q numpy
# Helm v4's engine for the chart tests (renders and lints without a helm binary).
"$RIDE_VENV/bin/python" -c "import helm_python" 2>/dev/null || "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q "helm-python-sdk==0.2.2"
if [ "${RIDE_SETUP_BENCH:-0}" = 1 ]; then
  # Only the benchmarks compare against PyTorch (timm's Swin and transforms,
  # torchvision + PIL); tests do not need them. --no-deps keeps torch pinned;
  # Pillow 12+ rejects the posterize(bits=0) that timm RandAugment asks for at m10.
  "$RIDE_VENV/bin/python" -c 'import torchvision, PIL; assert int(PIL.__version__.split(".")[0]) < 12' 2>/dev/null || \
    "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q --no-deps "torchvision==0.26.0" "pillow<12"
  "$RIDE_VENV/bin/python" -c 'import timm' 2>/dev/null || {
    "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q pyyaml huggingface_hub safetensors
    "$RIDE_VENV/bin/pip" install --disable-pip-version-check -q --no-deps timm
  }
fi
# The tests' Kubernetes control plane, kubectl and helm, built from Go modules
# once (scripts/k8s-tools.sh), and Kueue (scripts/k8s-kueue.sh); the main job
# does not need them.
if [ "${RIDE_SETUP_K8S:-0}" = 1 ]; then
  "$here/k8s-tools.sh"
  "$here/k8s-crds.sh"
  "$here/k8s-kueue.sh"
fi
cd "$here/.."
echo "==> building (cargo target dir: $CARGO_TARGET_DIR)"
cargo build --release --workspace --bins
