"""`blspdata run CONFIG.yaml`: the whole pipeline from one config, in one run folder.

    ingest -> generate -> curate -> publish -> stage1 -> stage2 -> evaluate  (then report.html)

Each stage is a list of units (ingest and generate: one per corpus; the others: one). A unit's
fingerprint hashes its settings, the fingerprints of what it reads (a corpus folder: the
names, sizes and times of its files; an earlier unit: that unit's fingerprint) and the
blspdata version. `RUN_DIR/run.json` records each unit's fingerprint and status, so a rerun

- skips a unit that is done with the same fingerprint and whose outputs are there,
- resumes a unit that was interrupted with the same fingerprint (generation continues its
  output file, training continues from `last/`), and
- starts afresh a unit whose fingerprint changed (its old outputs are removed first), which
  changes the fingerprints of everything downstream, so they rerun too.

The config is validated before anything runs (pydantic), with messages that name the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from blspdata.corpora import CORPORA
from blspdata.errors import BlspdataError, cut
from blspdata import __version__
from blspdata.layout import RunLayout
from blspdata.locks import exclusive
from blspdata.parallel import cores
from blspdata.records import sidecar, write_json

STAGES = ("ingest", "generate", "curate", "publish", "stage1", "stage2", "evaluate")
DEMO_MODELS = ("demo:tiny-whisper", "demo:smollm2")  # made in RUN_DIR/models, no download


class ConfigError(BlspdataError, ValueError):
    """A config the pipeline cannot run; the message names the key."""


class RunError(BlspdataError):
    """A run folder the pipeline cannot use or finish (its run.json, a dataset that does not verify)."""


# ---------------------------------------------------------------------------- the config

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Corpus(_Strict):
    kind: Literal[tuple(CORPORA)]  # type: ignore[valid-type]  # every importer in blspdata.corpora
    root: str = Field(description="the corpus folder as distributed (jsonl/csv: the file)")
    name: Optional[str] = Field(None, description="file names in the run folder [kind]")
    task: Optional[Literal["semantic", "emotion"]] = None  # [semantic for ASR corpora, emotion for emotion corpora]
    normalizer: Literal["light", "whisper", "none"] = "light"
    options: dict[str, Any] = {}  # the importer's own: splits, subset, test_sessions, label_map, text_col, ...

    @model_validator(mode="after")
    def _defaults(self) -> "Corpus":
        self.name = self.name or self.kind
        kind = CORPORA[self.kind]
        if self.task is None:
            if kind.task is None:
                raise ValueError(f"a {self.kind} corpus needs task: semantic or emotion")
            self.task = kind.task
        accepted = kind.options()
        unknown = set(self.options) - accepted
        if unknown:
            raise ValueError(f"options: unknown {', '.join(sorted(unknown))} for {self.kind}; "
                             f"known: {', '.join(sorted(accepted))}")
        return self


class _GenerateExtras(_Strict):
    """The generate: section's per-task prompts; its options are added from GenerateSettings' fields."""
    prompts: dict[Literal["semantic", "emotion"], str] = {}  # task -> template name or .toml file


class _CurateChecks(_Strict):
    """The curate: section's lists; its options are added from their settings fields (below)."""
    disable: list[str] = []
    enable: list[str] = []
    drop_unfinished: Optional[bool] = None  # as `curate --drop-unfinished`: enable unfinished

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, values: Any) -> Any:
        """Curate's own check of every value (curate.run.settings_from, as for its TOML file and
        flags: the same types, bounds and old names); an unknown key is left to extra="forbid"."""
        from blspdata.curate.run import KEYS, LISTS, CurateError, settings_from

        if isinstance(values, dict):
            try:
                settings_from(None, {k: v for k, v in values.items() if k in KEYS or k in LISTS})
            except CurateError as exc:
                raise ValueError(str(exc)) from None
        return values


def _section(name: str, *settings: type, skip: frozenset[str] | set[str] = frozenset(),
             base: type[BaseModel] = _Strict, typed: bool = False):
    """A config section straight from settings dataclasses (one list of names and types),
    each field described by its `help` metadata and read under its older names too (`aliases`
    metadata, blspdata.options.option). Each field optional (None: the stage's default, the
    stage checks the value), or with `typed` as the dataclass declares it: its type, its
    default and its bounds, checked here."""
    definitions: dict[str, Any] = {}
    for cls in settings:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name not in skip:
                aliases = f.metadata.get("aliases", ())
                described = dict(description=f.metadata.get("help"),
                                 validation_alias=AliasChoices(f.name, *aliases) if aliases else None)
                if not typed:
                    definitions[f.name] = (Optional[hints[f.name]], Field(None, **described))
                    continue
                limits = {k: f.metadata[k] for k in ("ge", "gt", "le") if f.metadata.get(k) is not None}
                default = {"default_factory": f.default_factory} if f.default_factory is not MISSING \
                    else {"default": f.default}
                definitions[f.name] = (hints[f.name], Field(**default, **described, **limits))
    return create_model(name, __base__=base, **definitions)


def _stage_model(name: str):
    """The trainer's options, straight from TrainConfig."""
    from blspdata.train.config import TrainConfig

    return _section(name, TrainConfig, skip={"stage", "data", "out", "init", "mix"})


def _curate_model():
    """Curate's options, straight from FilterSettings and DedupSettings (curate/options.py)."""
    from blspdata.curate.filters import FilterSettings
    from blspdata.curate.options import DedupSettings

    return _section("Curate", FilterSettings, DedupSettings, skip={"enabled"}, base=_CurateChecks)


def _generate_model():
    """Generate's options, straight from GenerateSettings (generate/options.py)."""
    from blspdata.generate.options import GenerateSettings

    return _section("Generate", GenerateSettings, base=_GenerateExtras, typed=True)


def _publish_model():
    """Publish's options, straight from PublishSettings (publish_options.py)."""
    from blspdata.publish_options import PublishSettings

    return _section("Publish", PublishSettings, typed=True)


Generate = _generate_model()
Curate = _curate_model()
Publish = _publish_model()
Stage1 = _stage_model("Stage1")
Stage2 = _stage_model("Stage2")


class Train(_Strict):
    encoder: str = Field(description="Whisper checkpoint (name or folder), or demo:tiny-whisper")
    llm: str = Field(description="causal LM (name or folder), or demo:smollm2")
    llm_gguf: Optional[str] = None
    lora_scope: Optional[Literal["audio", "global"]] = None
    lora_r: Optional[int] = None
    lora_alpha: Optional[int] = None
    lora_dropout: Optional[float] = None
    stage1: Stage1 = Stage1()
    stage2: Stage2 = Stage2()


class Evaluate(_Strict):
    split: str = "test"
    head_only: bool = False
    limit: Optional[int] = Field(None, ge=1)
    max_new_tokens: Optional[int] = Field(None, ge=1)  # [evaluate.MAX_NEW_TOKENS: the reference's 128]


class Config(_Strict):
    run_dir: str
    corpora: list[Corpus] = Field(min_length=1)
    generate: Generate = Generate()
    curate: Curate = Curate()
    publish: Publish = Publish()
    train: Optional[Train] = None  # absent: the run ends with the published dataset
    evaluate: Evaluate = Evaluate()

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        names = [c.name for c in self.corpora]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"corpus names must differ (give them name:), {', '.join(twice)} appears twice")
        if self.train is not None and self.publish.format != "arrow":
            raise ValueError("training reads the arrow layout: publish.format must be arrow when train is set")
        return self


def load_config(path: str | Path, run_dir: str | Path | None = None) -> Config:
    """Read and validate a YAML config. Relative paths in it are relative to its folder."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}: {exc.object[exc.start:exc.start + 4]!r}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {cut(str(exc), 600)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run_dir, corpora, generate, ...)")
    if run_dir is not None:
        raw["run_dir"] = str(run_dir)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{path}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)) from None
    base = path.resolve().parent
    config.run_dir = str((base / Path(config.run_dir).expanduser()).resolve() if run_dir is None else Path(run_dir).resolve())
    for corpus in config.corpora:
        root = (base / Path(corpus.root).expanduser()).resolve()
        if corpus.kind != "hf" or root.exists():  # an hf root that is no path here is a Hub id
            corpus.root = str(root)
        for option in ("label_map", "supervisions", "audio_root"):  # paths beside the config
            if corpus.options.get(option):
                corpus.options[option] = str(base / corpus.options[option])
    for task, prompt in config.generate.prompts.items():
        if prompt.endswith(".toml"):
            config.generate.prompts[task] = str(base / prompt)
    if config.train:
        for key in ("encoder", "llm"):
            value = getattr(config.train, key)
            if value not in DEMO_MODELS and (base / value).exists():
                setattr(config.train, key, str(base / value))
    return config


def _describe(error: dict) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or "(top)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (a typo?)"
    elif error["type"] not in ("value_error", "missing"):
        message += f", got {cut(repr(error['input']))}"
    return cut(f"{where}: {message}", 600)


# ---------------------------------------------------------------------------- units and state

@dataclass
class Unit:
    stage: str
    key: str                      # ingest/librispeech, generate/iemocap, curate, ...
    fingerprint: str
    outputs: list[Path]           # what must exist for the unit to count as done
    work: Callable[[bool], dict]  # work(resume) -> a summary for run.json
    resumable: bool = False       # an interrupted run continues instead of starting over


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([__version__, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_fingerprint(path: str | Path) -> str:
    """Names, sizes and modification times of every file under `path` (or of the file)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]
    if not path.is_dir():
        return "missing"
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(full, path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class State:
    """RUN_DIR/run.json: per unit, its fingerprint, status, timing and summary."""

    def __init__(self, run_dir: Path):
        self.path = RunLayout(run_dir).state
        try:
            self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except ValueError as exc:  # not JSON, or not UTF-8
            raise RunError(f"{self.path}: not readable JSON ({cut(str(exc))}); move it away to start the run afresh") from None
        if not isinstance(self.data, dict) or not isinstance(self.data.setdefault("units", {}), dict) \
                or not all(isinstance(u, dict) for u in self.data["units"].values()):
            raise RunError(f"{self.path}: not a run record written by blspdata (expected an object with \"units\"); "
                           "move it away to start the run afresh")

    def get(self, key: str) -> dict:
        return self.data["units"].get(key, {})

    def set(self, key: str, **values: Any) -> None:
        self.data["units"].setdefault(key, {}).update(values)
        self.data["version"] = __version__
        stages: dict[str, dict] = {}  # the per-stage view the report shows
        for unit in self.data["units"].values():
            stage = stages.setdefault(unit["stage"], {"status": "done", "seconds": 0.0, "units": 0})
            stage["units"] += 1
            stage["seconds"] = round(stage["seconds"] + unit.get("seconds", 0.0), 1)
            if unit.get("status") != "done":
                stage["status"] = unit.get("status", "running")
        self.data["stages"] = {s: stages[s] for s in STAGES if s in stages}
        write_json(self.path, self.data)


def decide(unit: Unit, state: State, forced: bool) -> tuple[str, str]:
    """(action, why): action is skip, resume or run."""
    seen = state.get(unit.key)
    same = seen.get("fingerprint") == unit.fingerprint
    if forced:
        return "run", "--from"
    if same and seen.get("status") == "done" and all(p.exists() for p in unit.outputs):
        return "skip", "up to date"
    if same and seen.get("status") == "running" and unit.resumable:
        return "resume", "interrupted, continuing"
    if not seen:
        return "run", "new"
    return "run", "settings or inputs changed" if not same else "outputs missing or incomplete"


def _transient_rejects(summary: Any) -> int:
    """How many of a finished generate unit's rejects a rerun sends again (server failures)."""
    from blspdata.generate.run import TRANSIENT_REJECTS

    rejects = summary.get("rejects") if isinstance(summary, dict) else None
    if not isinstance(rejects, dict):
        return 0
    return sum(n for reason, n in rejects.items() if reason in TRANSIENT_REJECTS and isinstance(n, int))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ---------------------------------------------------------------------------- the stages

def plan(config: Config, progress: bool = True, trust_remote_code: bool = False, strict: bool = False) -> list[Unit]:
    """Every unit of the pipeline, in order, with its fingerprint and work. `strict` (the
    user's `run --strict`) is handed to ingest, generate, curate and publish; it is not in the
    fingerprints (a run that finishes writes the same rows either way)."""
    run = RunLayout(config.run_dir)
    units: list[Unit] = []
    generated: list[tuple[Path, str]] = []
    for corpus in config.corpora:
        manifest = run.manifest(corpus.name)
        ingest_fp = fingerprint("ingest", corpus.model_dump(exclude={"task"}), tree_fingerprint(corpus.root))
        units.append(Unit("ingest", f"ingest/{corpus.name}", ingest_fp, [manifest],
                          _ingest(corpus, manifest, progress, strict)))
        out = run.generated(corpus.name, corpus.task)
        settings = config.generate.model_dump(exclude={"prompts", "executor", "ray_actors", "concurrency",
                                                       "request_timeout", "retry_rejects"})
        if settings.get("model") is None and config.generate.backend == "embedded":
            # `model: null` means the packaged default, which a new version may change: the
            # fingerprint names it, so rows made by an older default are not reused.
            from blspdata.generate.models import served_name

            settings["model"] = served_name(None)
        prompt = config.generate.prompts.get(corpus.task)
        prompt_fp = tree_fingerprint(prompt) if prompt and prompt.endswith(".toml") else prompt
        generate_fp = fingerprint("generate", settings, corpus.task, prompt_fp, ingest_fp)
        units.append(Unit("generate", f"generate/{corpus.name}", generate_fp, [out],
                          _generate(config, corpus.task, prompt, manifest, out, progress, trust_remote_code, strict),
                          resumable=True))
        generated.append((out, generate_fp))
    curated = run.curated
    curate_fp = fingerprint("curate", config.curate.model_dump(), [fp for _, fp in generated])
    units.append(Unit("curate", "curate", curate_fp, [curated], _curate(config, [p for p, _ in generated], curated,
                                                                        progress, strict)))
    dataset = run.dataset
    publish_fp = fingerprint("publish", config.publish.model_dump(), curate_fp)
    units.append(Unit("publish", "publish", publish_fp, [dataset], _publish(config, curated, dataset, progress, strict)))
    if config.train is None:
        return sorted(units, key=lambda u: STAGES.index(u.stage))
    train = config.train
    bases = {k: (tree_fingerprint(v) if Path(v).exists() else v) for k, v in
             (("encoder", train.encoder), ("llm", train.llm))}
    model_fp = [bases, train.model_dump(exclude={"stage1", "stage2"})]
    stage1 = run.stage("stage1")
    stage1_fp = fingerprint("stage1", model_fp, _stage_settings(train.stage1), publish_fp)
    units.append(Unit("stage1", "stage1", stage1_fp, [run.checkpoint("stage1")],
                      _train(config, "stage1", dataset, stage1, None, progress, trust_remote_code), resumable=True))
    stage2 = run.stage("stage2")
    stage2_fp = fingerprint("stage2", model_fp, _stage_settings(train.stage2), stage1_fp)
    units.append(Unit("stage2", "stage2", stage2_fp, [run.checkpoint("stage2")],
                      _train(config, "stage2", dataset, stage2, run.checkpoint("stage1"), progress, trust_remote_code), resumable=True))
    evaluation = run.evaluate
    units.append(Unit("evaluate", "evaluate", fingerprint("evaluate", config.evaluate.model_dump(), stage2_fp),
                      [run.ser], _evaluate(config, run.checkpoint("stage2"), dataset, evaluation, trust_remote_code)))
    return sorted(units, key=lambda u: STAGES.index(u.stage))  # stable: corpora keep their order


def _stage_settings(options) -> dict:
    """A training stage's settings as its fingerprint reads them: an option added later
    (group_by_length) counts only when set, so a run folder from before it stays up to date;
    data_workers never counts (it changes the speed, not the results)."""
    later = {k for k in ("group_by_length",) if getattr(options, k) is None}
    return options.model_dump(exclude={"data_workers"} | later)


def _ingest(corpus: Corpus, manifest: Path, progress: bool, strict: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.ingest import ingest_corpus

        _remove([manifest, sidecar(manifest, "rejects.jsonl"), sidecar(manifest, "summary.json")])
        summary = ingest_corpus(corpus.kind, corpus.root, manifest, jobs=cores(), normalizer=corpus.normalizer,
                                strict=strict, progress=progress, **corpus.options)
        print(f"  {summary.render()}", file=sys.stderr)
        return summary.to_dict()
    return work


def _generate(config: Config, task: str, prompt: Optional[str], manifest: Path, out: Path,
              progress: bool, trust_remote_code: bool = False, strict: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.generate.run import generate

        if not resume:
            _remove([out, sidecar(out, "rejects.jsonl"), sidecar(out, "summary.json")])
        from blspdata.generate.options import GenerateSettings

        settings = GenerateSettings(**config.generate.model_dump(exclude={"prompts"}))
        summary = generate(manifest, out, task=task, prompt=prompt, settings=settings,
                           api_key=os.environ.get("OPENAI_API_KEY"), strict=strict, progress=progress,
                           trust_remote_code=trust_remote_code)
        print(f"  {summary.render()}", file=sys.stderr)
        return summary.to_dict()
    return work


def _curate(config: Config, inputs: list[Path], out: Path, progress: bool, strict: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.curate.run import curate, settings_from

        filters, dedup = settings_from(None, config.curate.model_dump())
        stats = curate(inputs, out, filters=filters, dedup=dedup, strict=strict, progress=progress)
        print(f"  {stats.render()}", file=sys.stderr)
        return {k: v for k, v in stats.to_dict().items() if k in ("input", "kept", "rejected", "rejects")}
    return work


def _publish(config: Config, curated: Path, dataset: Path, progress: bool, strict: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.publish import publish, push_to_hub, verify

        from blspdata.publish_options import PublishSettings

        p = PublishSettings(**config.publish.model_dump())
        result = publish([curated], dataset, **p.publish_args(), jobs=cores(), overwrite=True, progress=progress,
                         strict=strict)
        problems = verify(dataset)
        if problems:
            raise RunError(f"{dataset} does not verify: " + "; ".join(problems))
        print(f"  {dataset}: " + "; ".join(f"{c} " + ", ".join(f"{s} {n}" for s, n in splits.items())
                                          for c, splits in result["rows"].items()), file=sys.stderr)
        if p.push_to_hub:
            push_to_hub(dataset, p.push_to_hub, private=p.private)
        return {"rows": result["rows"], "rejected": result["rejected"]}
    return work


def _train(config: Config, stage: str, dataset: Path, out: Path, init: Optional[Path],
           progress: bool, trust_remote_code: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.train.run import train  # what `blspdata train` calls

        t = config.train
        encoder, llm = (_model_path(config, name) for name in (t.encoder, t.llm))
        resume = resume and (out / "last" / "trainer_state.pt").exists()  # else nothing to resume from
        if not resume:
            _remove([out])
        lora = {k: getattr(t, k) for k in ("lora_scope", "lora_r", "lora_alpha", "lora_dropout")}
        return train(stage, dataset, out, encoder=encoder, llm=llm, llm_gguf=t.llm_gguf, init=init, resume=resume,
                     progress=progress, trust_remote_code=trust_remote_code, **getattr(t, stage).model_dump(), **lora)
    return work


def _evaluate(config: Config, checkpoint: Path, dataset: Path, out: Path,
              trust_remote_code: bool = False) -> Callable[[bool], dict]:
    def work(resume: bool) -> dict:
        from blspdata.train.evaluate import evaluate_ser

        e = config.evaluate
        result = evaluate_ser(checkpoint, dataset / "emotion", split=e.split, out=out, limit=e.limit,
                              max_new_tokens=e.max_new_tokens, prompt_too=not e.head_only,
                              trust_remote_code=trust_remote_code)
        print(result["text"], file=sys.stderr)
        return {k: result[k] for k in ("split", "rows", "head_accuracy", "head_ua", "prompt_accuracy", "prompt_ua")
                if k in result}
    return work


def _model_path(config: Config, name: str) -> str:
    """A demo model is made once in RUN_DIR/models (no download); anything else is as given."""
    if name not in DEMO_MODELS:
        return name
    from blspdata.train import demo_models

    folder = RunLayout(config.run_dir).model(name.split(":", 1)[1])
    if not (folder / "config.json").exists():
        (demo_models.tiny_whisper if name == "demo:tiny-whisper" else demo_models.smollm2)(folder)
    return str(folder)


# ---------------------------------------------------------------------------- the run

def run(config: Config, start: Optional[str] = None, until: Optional[str] = None, dry_run: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print,
        trust_remote_code: bool = False, strict: bool = False) -> list[tuple[Unit, str, str]]:
    """Run (or with dry_run, only decide) every unit from `start` to `until`. Returns what
    was decided for each unit. `trust_remote_code` is the user's `run --trust-remote-code`: the
    config alone cannot turn it on. `strict` (`run --strict`): each stage this run runs stops at
    its first bad input, as that stage's own --strict does (stages skipped as up to date are not
    read again)."""
    from blspdata.generate.run import GenerateError, check_engine_args

    g = config.generate
    try:  # before ingest spends hours: a config asking to run a model's own code is refused now
        check_engine_args(dict(g.engine_args), trust_remote_code, g.backend, g.serve)
    except GenerateError as exc:
        raise ConfigError(f"generate.{exc}") from None
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"{name}: unknown stage {value!r}; stages: {', '.join(STAGES)}")
    run_dir = Path(config.run_dir)
    if not progress:
        import transformers.utils.logging as hf_logging

        hf_logging.disable_progress_bar()
    if dry_run:
        return _run(config, start, until, True, progress, echo, trust_remote_code, strict)
    # One run per run folder: a second one (a requeued job, a second terminal) would write the
    # same metrics.jsonl and checkpoints. The kernel drops the lock when this process ends.
    with exclusive(RunLayout(run_dir).lock, what=f"run folder {run_dir}"):
        return _run(config, start, until, False, progress, echo, trust_remote_code, strict)


def _run(config: Config, start: Optional[str], until: Optional[str], dry_run: bool, progress: bool,
         echo: Callable[[str], None], trust_remote_code: bool, strict: bool = False) -> list[tuple[Unit, str, str]]:
    run_dir = Path(config.run_dir)
    units = plan(config, progress, trust_remote_code, strict)
    stages = [u.stage for u in units]
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    for flag, stage in (("--from", start), ("--until", until)):
        if stage and stage not in stages:
            raise ConfigError(f"{flag} {stage}: this config has no {stage} stage (no train: section?)")
    if "stage2" in stages and last >= STAGES.index("stage2") and not any(c.task == "emotion" for c in config.corpora):
        raise ConfigError("stage2 and evaluate train on emotion rows, and no corpus has task: emotion; "
                          "add one, or stop with --until stage1")
    state = State(run_dir)
    decided = []
    rewrote = len(STAGES)  # the earliest stage whose finished output this run rewrote
    for unit in units:
        index = STAGES.index(unit.stage)
        if index > last:
            break
        if index < first:
            seen = state.get(unit.key)
            if seen.get("status") != "done":
                raise ConfigError(f"--from {start}: {unit.key} has not finished yet; run it first (drop --from)")
            decided.append((unit, "skip", "before --from"))
            continue
        action, why = decide(unit, state, forced=start is not None)
        if action == "skip" and index > rewrote:
            # Fingerprints follow settings, not content: when an earlier finished stage wrote
            # new rows (a retry filled its holes), what was built from it is stale.
            action, why = "run", "an earlier stage wrote new rows"
        elif action == "skip" and unit.stage == "generate" and config.generate.retry_rejects:
            transient = _transient_rejects(state.get(unit.key).get("summary"))
            if transient:
                action, why = "resume", f"{transient} transient rejects to retry (generate.retry_rejects)"
        decided.append((unit, action, why))
        echo(f"== {unit.key}: {action} ({why})")
        if dry_run or action == "skip":
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        was_done = state.get(unit.key).get("status") == "done"
        state.set(unit.key, stage=unit.stage, fingerprint=unit.fingerprint, status="running",
                  started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        began = time.monotonic()
        summary = unit.work(action == "resume")
        state.set(unit.key, status="done", seconds=round(time.monotonic() - began, 1), summary=summary)
        if was_done and action == "resume" and summary.get("written"):
            rewrote = min(rewrote, index)
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(RunLayout(run_dir).config, config.model_dump())
    return decided
