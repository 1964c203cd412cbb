"""One frozen job configuration, built at the edge from flags, environment, job file and defaults.

Precedence: flag > environment > job file > built-in default. The API key is
read from the environment only (never from a file or a flag) and is wrapped in
`Secret` so that no repr, log line or record can show it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .defaults import default_file
from .errors import ConfigError
from .options import ALWAYS, IF_CHANGED, declared
from .options import option as _option
from .providers import check_formats
from .secret import Secret, looks_like_a_key
from .storage import protocol

DEFAULT_API_KEY_ENV = "ANYFAST_API_KEY"
FALLBACK_API_KEY_ENV = "OPENAI_API_KEY"

# The prices shipped with the package, unless a job file or --prices names another (a copy with your contract's prices).
DEFAULT_PRICES = default_file("prices.toml")


@dataclass(frozen=True)
class JobConfig:
    """Every option of a job, each declared once (see options.py); api_key is never an option."""

    manifest: Path | str | None = _option(None, "CSV, JSONL, Parquet, .txt (one image per line) or a folder of images; "
                                          "a local path or a URL (s3://, gs://, az://, hf://, https://)", flag=None)
    output: Path | str | None = _option(None, "Parquet file to write, or a folder (local or a bucket URL ending in /): a dataset "
                                        "each run adds part files to (default: output/<manifest name>.parquet)", short="-o", metavar="PATH")
    image_column: str | None = _option(None, "the manifest column that holds the image path or URL, any case "
                                      "(default: the first of image, path, url, image_url, file)", metavar="NAME")
    id_column: str | None = _option(None, "the manifest column that holds each row's id, any case (default: id, else the image value)", metavar="NAME")
    base_url: str = _option("https://www.anyfast.ai/v1", "the provider's OpenAI-compatible API root", metavar="URL", env="CAPTION_BASE_URL")
    model: str = _option("claude-sonnet-4-20250514", "model to ask", metavar="NAME", env="CAPTION_MODEL", fingerprint=ALWAYS)
    api_key_env: str = _option(DEFAULT_API_KEY_ENV, f"environment variable that holds the API key (falls back to {FALLBACK_API_KEY_ENV})", metavar="NAME")
    prompt: str = _option("Describe this image in one or two sentences for a dataset caption.",
                         "instruction sent with every image unless the manifest row has its own prompt", metavar="TEXT", show_default=False)
    system: str | None = _option(None, "system message sent before the image (default: none)", metavar="TEXT", fingerprint=ALWAYS)
    max_tokens: int = _option(300, "longest caption, in tokens", metavar="N", fingerprint=ALWAYS)
    temperature: float | None = _option(None, "sampling temperature, 0 to 2 (default: the provider's)", metavar="X", fingerprint=ALWAYS)
    concurrency: int = _option(16, "most requests in flight at once", metavar="N")
    rpm: int | None = _option(None, "requests per minute the provider allows; paced just under it (default: found from 429s and limit headers)", metavar="N")
    tpm: int | None = _option(None, "tokens per minute the provider allows, counted from an estimate before sending (default: found adaptively)", metavar="N")
    max_retries: int = _option(6, "retries per image after a transient failure", metavar="N")
    timeout: float = _option(120.0, "give up on one attempt after this long", metavar="SECONDS")
    limit: int | None = _option(None, "process at most N rows this run, counted after those already done are skipped", metavar="N")
    dry_run: bool = _option(False, "read and check everything, send nothing, say what would be sent", show_default=False)
    redo: bool = _option(False, "caption every row again, even those the output already holds", show_default=False)
    retry_errors: bool = _option(True, "on a rerun, skip rows that failed last time too (by default they are tried again)",
                                flag="--no-retry-errors", show_default=False)
    grace: float = _option(20.0, "after SIGTERM or Ctrl-C, how long requests in flight may finish", metavar="SECONDS")
    max_consecutive_failures: int = _option(50, "abort (exit 3) after N rows in a row fail the same way, 0 for never", metavar="N")
    log_format: str | None = _option(None, "log as text or one JSON object per line (default: json when stderr is not a terminal)",
                                    choices=("text", "json"), env="CAPTION_LOG_FORMAT")
    prices: Path | None = _option(DEFAULT_PRICES, "TOML of USD per million tokens per model (default: the copy shipped in pipeline/defaults/prices.toml)",
                                 metavar="FILE", show_default=False)
    max_cost: float | None = _option(None, "stop (resumably, exit 4) before spending more than this, counting requests in flight", metavar="USD")
    max_image_side: int = _option(1568, "scale images down so the long edge is at most this", metavar="PX", fingerprint=IF_CHANGED)
    max_image_bytes: int = _option(5 * 1024 * 1024, "largest base64 image payload; bigger images are re-encoded smaller", metavar="N", fingerprint=IF_CHANGED)
    fetch_remote: bool = _option(False, "download http(s) images and send them inline, prepared like local files", fingerprint=IF_CHANGED, show_default=False)
    allow_private_urls: bool = _option(False, "let --fetch-remote reach loopback, private and link-local addresses", show_default=False)
    image_detail: str | None = _option(None, "image detail for OpenAI-style models (default: not sent)", choices=("low", "high", "auto"), fingerprint=IF_CHANGED)
    image_formats: str = _option("auto", "image types the provider takes as they are, e.g. jpeg,png,webp; others are converted "
                                "(auto: no GIF for Ollama and Gemini, by --base-url and --model)", metavar="LIST", fingerprint=IF_CHANGED)
    stream: bool = _option(False, "ask for a streamed answer (stream: true, with usage in the last chunk)", show_default=False)
    stall_timeout: float = _option(60.0, "with --stream, longest silence between chunks", metavar="SECONDS")
    max_tokens_field: str = _option("auto", "which field carries --max-tokens; auto picks max_completion_tokens for OpenAI reasoning models",
                                   choices=("auto", "max_tokens", "max_completion_tokens"))
    engine: str = _option("local", "where the requests run: this process (local) or a Ray cluster (ray; pip install 'pipeline[ray]')",
                          choices=("local", "ray"))
    ray_address: str | None = _option(None, "with --engine ray, the cluster to join (default: RAY_ADDRESS, else a Ray started on this machine)",
                                      metavar="ADDR")
    batch: bool = _option(False, "send the rows left as provider batch jobs, at the batch price (about half), answered within "
                          "24 h; rows are written as each batch is collected", show_default=False)
    batch_api: str = _option("openai", "with --batch: OpenAI-compatible Files + Batches at --base-url, or Anthropic Message "
                             "Batches (--base-url https://api.anthropic.com/v1, key sent as x-api-key)", choices=("openai", "anthropic"))
    batch_wait: bool = _option(True, "with --batch, submit and exit 0 instead of waiting; any later run collects what finished",
                               flag="--no-wait", show_default=False)
    batch_max_requests: int = _option(50_000, "most requests in one batch (OpenAI takes 50,000; Anthropic 100,000)", metavar="N")
    batch_max_bytes: int = _option(200_000_000, "largest batch file (OpenAI takes 200 MB; Anthropic 256 MB)", metavar="BYTES")
    batch_poll: float = _option(30.0, "with --batch, how often the batches in progress are checked", metavar="SECONDS")
    schema: dict[str, Any] | None = _option(None, "JSON Schema file the answer must follow (or a [schema] table in the job file): each "
                                            "top-level property becomes a typed column; the raw answer stays in caption",
                                            metavar="FILE", fingerprint=IF_CHANGED, show_default=False)
    schema_mode: str = _option("auto", "with --schema: send it as response_format, or in the prompt (auto: in the prompt for Claude "
                               "models, whose OpenAI layer ignores response_format; see the README's provider table)",
                               choices=("auto", "response_format", "prompt"), fingerprint=IF_CHANGED)
    max_invalid: int = _option(2, "with --schema, ask again up to N times when an answer is not JSON that follows the schema; "
                               "then the row is an invalid_output error", metavar="N")
    dedupe: bool = _option(True, "send every row, even one whose image bytes and request settings equal a row already answered "
                           "(by default such a row reuses that answer, at no cost)", flag="--no-dedupe", show_default=False)
    tasks: dict[str, dict[str, Any]] = _option(help="several questions per image: [tasks.NAME] tables with prompt, system, max_tokens, "
                                               "temperature, schema (each defaulting to the job's); one output row per image and task",
                                               default_factory=dict, flag=None)
    extra_body: dict[str, Any] = _option(help="merged into every request body", default_factory=dict, flag=None, fingerprint=IF_CHANGED)
    extra_headers: dict[str, str] = _option(help="sent with every request (not Authorization)", default_factory=dict, flag=None)
    storage: dict[str, dict[str, Any]] = _option(help="fsspec options per protocol, e.g. [storage.s3] endpoint_url (never logged)",
                                                 default_factory=dict, flag=None)
    api_key: Secret | None = None
    task: str | None = None  # set in a task's own configuration (tasks.task_configs), never by a user

    def redact(self, text: str) -> str:
        """Remove the API key from a text that came from elsewhere (a server body, an exception)."""
        return self.api_key.mask(text) if self.api_key else text

    def public_options(self) -> dict[str, Any]:
        """The effective options, safe to log or record (no key)."""
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        options.update({name: str(options[name]) for name in PATH_OPTIONS if options[name] is not None})
        options["extra_headers"] = sorted(self.extra_headers)  # names only: a header may carry a credential
        options["storage"] = sorted(self.storage)  # protocols only: options may carry credentials
        return options


OPTION_NAMES = frozenset(f.name for f, _ in declared(JobConfig))
# Options that an environment variable may set (log_format's is read by the CLI, before logging starts).
ENVIRONMENT = {f.name: o.env for f, o in declared(JobConfig) if o.env and f.name != "log_format"}
PATH_OPTIONS = ("manifest", "output", "prices")


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    job_file: str | os.PathLike | None = None,
    *,
    need_key: bool = True,
) -> JobConfig:
    """Merge the layers, check every value, and look up the API key (`need_key` False: none is needed, e.g. an export)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if job_file is not None:
        values.update(read_job_file(Path(job_file)))
    for option, variable in ENVIRONMENT.items():
        if environ.get(variable):
            values[option] = environ[variable]
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = set(values) - OPTION_NAMES
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")

    if isinstance(values.get("api_key_env"), str) and looks_like_a_key(values["api_key_env"]):
        # Not echoed: it is most likely the key itself, pasted where its variable's name belongs.
        raise ConfigError("--api-key-env takes the NAME of an environment variable (e.g. ANYFAST_API_KEY), and the value "
                          "given looks like a key itself; put the key in a variable and pass that variable's name")
    checked = _check(values)
    if checked.get("manifest") is None:
        raise ConfigError("no manifest given: pass MANIFEST (a CSV, JSONL, Parquet, .txt file or a folder) or set `manifest` in the job file")
    if checked.get("output") is None:
        checked["output"] = Path("output") / f"{Path(checked['manifest']).stem or 'captions'}.parquet"
    elif isinstance(checked["output"], Path) and checked["output"].suffix.lower() not in (".parquet", "") and not checked["output"].is_dir():
        # -o x.csv used to write Parquet into a file named .csv; `pipeline export` is for other formats.
        raise ConfigError(f"--output must name a .parquet file or a folder (a dataset of part files), got {str(checked['output'])!r} "
                          f"(try {str(checked['output'].with_suffix('.parquet'))!r})")
    config = JobConfig(**checked)
    if config.tasks:
        from .tasks import check_tasks
        check_tasks(config)
    key = _find_api_key(config.api_key_env, environ)
    if key is None and not config.dry_run and need_key:
        raise ConfigError(_missing_key_message(config.api_key_env))
    return JobConfig(**{**checked, "api_key": Secret(key) if key else None})


def read_job_file(path: Path) -> dict[str, Any]:
    """A TOML job file; relative paths in it are relative to the file's own folder, so cron's cwd does not matter."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read job file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"job file {path} is not valid TOML: {e}") from None
    if "api_key" in data:
        raise ConfigError(f"job file {path} sets api_key: keys never go in files; set api_key_env to the name of an environment variable instead")
    unknown = set(data) - OPTION_NAMES
    if unknown:
        named = [f"{key} (did you mean {guess[0]}?)" if (guess := difflib.get_close_matches(key, OPTION_NAMES, n=1, cutoff=0.6)) else key
                 for key in sorted(unknown)]
        raise ConfigError(f"job file {path}: unknown option(s) {', '.join(named)}; known: {', '.join(sorted(OPTION_NAMES))}")
    for option in PATH_OPTIONS:
        if isinstance(data.get(option), str) and protocol(data[option]) is None:
            data[option] = path.parent / Path(data[option]).expanduser()
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}  # (not tables: _check says so)
    for table in [data, *(t for t in tasks.values() if isinstance(t, dict))]:
        if isinstance(table.get("schema"), str):  # a file beside the job file; a [schema] table is the schema itself
            table["schema"] = str(path.parent / Path(table["schema"]).expanduser())
    return data


def _find_api_key(variable: str, environ: Mapping[str, str]) -> str | None:
    key = environ.get(variable)
    if not key and variable == DEFAULT_API_KEY_ENV:
        key = environ.get(FALLBACK_API_KEY_ENV)
    return key or None


def _missing_key_message(variable: str) -> str:
    also = f" (or {FALLBACK_API_KEY_ENV})" if variable == DEFAULT_API_KEY_ENV else ""
    return f"no API key: set the environment variable {variable}{also}, or name another variable with --api-key-env"


def _check(values: dict[str, Any]) -> dict[str, Any]:
    """Coerce and validate each value; a wrong one is a ConfigError naming the option."""
    out = dict(values)

    def number(name: str, kind: type, minimum: float, maximum: float | None = None) -> None:
        if out.get(name) is None:
            return
        raw = out[name]
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name.replace('_', '-')} must be a {'whole ' if kind is int else ''}number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f"{name.replace('_', '-')} must be {bound}, got {raw!r}")
        out[name] = value

    number("max_tokens", int, 1)
    number("temperature", float, 0, 2)
    number("concurrency", int, 1, 10_000)
    number("rpm", int, 1)
    number("tpm", int, 1)
    number("max_retries", int, 0, 100)
    number("timeout", float, 0.1)
    number("limit", int, 0)
    number("grace", float, 0)
    number("max_cost", float, 0)
    number("max_image_side", int, 64, 10_000)
    number("max_image_bytes", int, 10_000)
    number("stall_timeout", float, 0.1)
    for name, allowed in (("image_detail", (None, "low", "high", "auto")), ("max_tokens_field", (None, "auto", "max_tokens", "max_completion_tokens"))):
        if out.get(name) not in allowed:
            raise ConfigError(f"{name.replace('_', '-')} must be one of {', '.join(a for a in allowed if a)}, got {out[name]!r}")
    if out.get("image_formats") is not None:
        problem = check_formats(out["image_formats"]) if isinstance(out["image_formats"], str) else "image-formats must be text"
        if problem:
            raise ConfigError(problem)
    for name in ("extra_body", "extra_headers"):
        if out.get(name) is not None and not isinstance(out[name], dict):
            raise ConfigError(f"{name} must be a table in the job file, e.g. [{name}]")
    if "messages" in out.get("extra_body", {}):
        raise ConfigError("extra_body may not set messages: the job builds them from the prompt and the image")
    if any(str(h).lower() == "authorization" for h in out.get("extra_headers", {})):
        raise ConfigError("extra_headers may not set Authorization: the key is read from the environment only (--api-key-env)")
    out["extra_headers"] = {str(k): str(v) for k, v in out.get("extra_headers", {}).items()}
    number("max_consecutive_failures", int, 0)
    number("batch_max_requests", int, 1)
    number("batch_max_bytes", int, 1_000)
    number("batch_poll", float, 0.01)
    number("max_invalid", int, 0, 20)
    if out.get("schema_mode") not in (None, "auto", "response_format", "prompt"):
        raise ConfigError(f"schema-mode must be auto, response_format or prompt, got {out['schema_mode']!r}")
    if out.get("schema") is not None:
        from .structured import load_schema  # jsonschema loads only for a job with a schema
        out["schema"] = load_schema(out["schema"])
    if out.get("tasks"):
        from .tasks import check_task_tables
        out["tasks"] = check_task_tables(out["tasks"], _check)
    if out.get("batch_api") not in (None, "openai", "anthropic"):
        raise ConfigError(f"batch-api must be openai or anthropic, got {out['batch_api']!r}")
    if out.get("batch") and out.get("engine") == "ray":
        raise ConfigError("--batch sends batch jobs from this machine; it does not run on --engine ray (drop one of them)")
    if out.get("engine") not in (None, "local", "ray"):
        raise ConfigError(f"engine must be local or ray, got {out['engine']!r}")
    if out.get("log_format") not in (None, "text", "json"):
        raise ConfigError(f"log-format must be text or json, got {out['log_format']!r}")
    for name in ("base_url", "model", "api_key_env", "prompt", "system"):
        if out.get(name) is not None and not isinstance(out[name], str):
            raise ConfigError(f"{name.replace('_', '-')} must be text, got {out[name]!r}")
    if out.get("base_url") and not out["base_url"].startswith(("http://", "https://")):
        raise ConfigError(f"base-url must start with http:// or https://, got {out['base_url']!r}")
    if out.get("prompt") == "":
        raise ConfigError("prompt must not be empty")
    for name in ("dry_run", "redo", "retry_errors", "fetch_remote", "allow_private_urls", "stream", "batch", "batch_wait", "dedupe"):
        if name in out and not isinstance(out[name], bool):
            raise ConfigError(f"{name} must be true or false, got {out[name]!r}")
    for option in PATH_OPTIONS:
        if out.get(option) is not None:
            out[option] = _location(option, out[option])
    if out.get("storage") is not None:
        if not isinstance(out["storage"], dict) or not all(isinstance(v, dict) for v in out["storage"].values()):
            raise ConfigError("storage must be a table of tables in the job file, one per protocol: [storage.s3] endpoint_url = \"...\"")
    return out


def _location(option: str, value: Any) -> Path | str:
    """A local path, or a URL kept as text (Path would fold its //); only the manifest may be a URL for now."""
    text = str(value)
    if protocol(text) is None:
        return Path(text).expanduser()
    if option == "output" and text.rstrip("/").lower().endswith(".parquet"):
        raise ConfigError(f"an output in a bucket is a dataset folder of part files: end it with / (got {text!r})")
    if option not in ("manifest", "output"):
        raise ConfigError(f"{option} must be a local path, got the URL {text!r}")
    return text
