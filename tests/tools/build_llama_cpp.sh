#!/usr/bin/env bash
# Build llama.cpp's `llama-simple` (greedy generation from a GGUF file) from the sources that the PyPI
# package llama-cpp-python ships, for the slow-tier check that llama.cpp itself loads lmforge's GGUF
# exports. Usage: tests/tools/build_llama_cpp.sh OUT_DIR  ->  OUT_DIR/llama-simple (about 3 minutes on 2 cores).
set -euo pipefail
out="$(realpath -m "${1:?usage: build_llama_cpp.sh OUT_DIR}")"
pinned="$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$(dirname "$0")/../../src/lmforge/export/llamacpp.py")"  # the one pin
version="${LLAMA_CPP_PYTHON_VERSION:-$pinned}"
if [ -x "$out/llama-simple" ]; then exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=ON > "$work/cmake.log"
cmake --build "$work/build" -j "$(nproc)" --target llama-simple > "$work/build.log"
mkdir -p "$out"
cp "$work/build/bin/llama-simple" "$out/llama-simple"
echo "built $out/llama-simple (llama.cpp from llama-cpp-python $version)"
