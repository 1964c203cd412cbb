"""Structured answers (--schema): what the request asks for, and how an answer becomes typed columns or an error.

Where the provider follows `response_format` (providers.structured_mode) the schema goes there, strict when the
schema meets OpenAI's strict rules; elsewhere it goes into the prompt. Either way the answer is read the same
way: the first JSON object in it, checked with jsonschema. Each top-level property is a column of the Arrow
type its schema names; the raw answer stays in `caption`.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from .errors import AnswerError, ConfigError
from .providers import structured_mode
from .records import Completion
from .results import OUTPUT_COLUMNS

if TYPE_CHECKING:
    from .config import JobConfig

# The words the prompt-mode instruction ends with; the simulator looks for them, as a model reads them.
SCHEMA_MARKER = "It must follow this JSON Schema:"
# Columns later features add to every row; a property of the same name goes under answer_<name>.
RESERVED = OUTPUT_COLUMNS | {"task", "reused_from"}
_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class InvalidOutputError(AnswerError):
    """The answer is not a JSON object that follows the schema (after --max-invalid more asks)."""

    error_type = "invalid_output"


def load_schema(value: Any) -> dict[str, Any]:
    """A [schema] table as it is, or the JSON Schema in the file --schema names; checked either way."""
    if isinstance(value, dict):
        return check_schema(value, "the job file's [schema] table")
    try:
        text = Path(str(value)).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"schema file not found: {value}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read schema file {value}: {getattr(e, 'strerror', None) or e}") from None
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"schema file {value} is not JSON: {e}") from None
    return check_schema(schema, f"schema file {value}")


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """The schema, or a ConfigError that says what is wrong with it."""
    from jsonschema import SchemaError, validators

    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: a JSON Schema is an object, got {type(schema).__name__}")
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ConfigError(f"{where} is not a valid JSON Schema: {e.message} (at {e.json_path})") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise ConfigError(f"{where}: the schema's top level must be {{\"type\": \"object\", \"properties\": {{...}}}}: "
                          "each property becomes a column")
    return schema


def answer_schema(config: JobConfig) -> "AnswerSchema | None":
    """The job's AnswerSchema (None without --schema), made once per configuration: every request asks for it."""
    if config.schema is None:
        return None
    mode = config.schema_mode
    if mode == "auto":
        anthropic_batch = config.batch and config.batch_api == "anthropic"  # its native API has no response_format
        mode = "prompt" if anthropic_batch else structured_mode(config.base_url, config.model)
    made = _MADE.get(id(config.schema))
    if made is None or made[0] is not config.schema or made[1].mode != mode:
        if len(_MADE) > 16:
            _MADE.clear()
        made = _MADE[id(config.schema)] = (config.schema, AnswerSchema(config.schema, mode))
    return made[1]


class AnswerSchema:
    """One job's schema: the request's part of it, and answer text -> column values."""

    def __init__(self, schema: dict[str, Any], mode: str):
        from jsonschema import validators

        self.schema = schema
        self.mode = mode  # "response_format" or "prompt"
        self._validator = validators.validator_for(schema)(schema)
        self._root = schema
        self.columns: dict[str, str] = {name: f"answer_{name}" if name in RESERVED else name for name in schema["properties"]}
        self._converters: dict[str, Callable[[Any], Any]] = {}
        fields = []
        for name, column in self.columns.items():
            kind, convert = self._column(schema["properties"][name], set())
            fields.append(pa.field(column, kind))
            self._converters[name] = convert
        self.arrow = pa.schema(fields)
        self._instruction = (f"\n\nAnswer with one JSON object and nothing else. {SCHEMA_MARKER}\n"
                             f"{json.dumps(schema, ensure_ascii=False)}") if mode == "prompt" else ""
        self._format = None
        if mode == "response_format":
            name = _NAME.sub("_", str(schema.get("title") or "annotation"))[:64] or "annotation"
            self._format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": is_strict(schema)}}

    def instruct(self, prompt: str) -> str:
        """The prompt sent: in prompt mode, with the schema after it."""
        return prompt + self._instruction if self._instruction else prompt

    def response_format(self) -> dict[str, Any] | None:
        return self._format

    def read(self, completion: Completion) -> dict[str, Any]:
        """The answer's columns; InvalidOutputError (keeping what it was billed) when it has no valid JSON object."""
        from jsonschema.exceptions import best_match

        text = completion.caption
        answer = first_json_object(text)
        billed = {"usage": completion.usage, "model": completion.model, "response_id": completion.response_id,
                  "finish_reason": completion.finish_reason}
        if answer is None:
            cut = " (cut off at max_tokens)" if completion.finish_reason == "length" else ""
            raise InvalidOutputError(f"the answer holds no JSON object{cut}: {text[:120]!r}", **billed)
        problem = best_match(self._validator.iter_errors(answer))
        if problem is not None:
            raise InvalidOutputError(f"the answer does not follow the schema: {problem.message[:300]} (at {problem.json_path})", **billed)
        return {self.columns[name]: convert(answer.get(name)) for name, convert in self._converters.items()}

    def _column(self, schema: Any, seen: set[str]) -> tuple[pa.DataType, Callable[[Any], Any]]:
        """The Arrow type of a property, and how its JSON value becomes a value of that type."""
        schema, seen = self._resolve(schema, seen)
        if schema is None:
            return pa.string(), _as_json_text
        kinds = schema.get("type")
        kinds = [k for k in kinds if k != "null"] if isinstance(kinds, list) else [kinds] if kinds else []
        if not kinds and "enum" in schema and all(isinstance(v, str) for v in schema["enum"] if v is not None):
            kinds = ["string"]
        if len(kinds) != 1 or any(k in schema for k in ("anyOf", "oneOf")):
            return pa.string(), _as_json_text  # a union: kept as the JSON text of the value
        kind = kinds[0]
        if kind in _SCALARS:
            arrow, python = _SCALARS[kind]
            return arrow, partial(_scalar, python)
        if kind == "array" and isinstance(schema.get("items"), dict):
            item, convert = self._column(schema["items"], seen)
            return pa.list_(item), lambda v: [convert(x) for x in v] if isinstance(v, list) else None
        if kind == "object" and isinstance(schema.get("properties"), dict) and schema["properties"]:
            parts = {name: self._column(sub, seen) for name, sub in schema["properties"].items()}
            struct = pa.struct([pa.field(name, arrow) for name, (arrow, _) in parts.items()])
            return struct, lambda v: {n: c(v.get(n)) for n, (_, c) in parts.items()} if isinstance(v, dict) else None
        return pa.string(), _as_json_text

    def _resolve(self, schema: Any, seen: set[str]) -> tuple[dict[str, Any] | None, set[str]]:
        """Follow a local $ref (#/$defs/X, as pydantic writes nested models); a recursive one is kept as JSON text."""
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            if not ref.startswith("#/") or ref in seen:
                return None, seen
            seen = seen | {ref}
            target: Any = self._root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            schema = target
        return (schema if isinstance(schema, dict) else None), seen


_MADE: dict[int, tuple[dict[str, Any], AnswerSchema]] = {}  # by the schema's identity (a config is not hashable)
_SCALARS: dict[str, tuple[pa.DataType, type]] = {
    "string": (pa.string(), str), "integer": (pa.int64(), int), "number": (pa.float64(), float), "boolean": (pa.bool_(), bool),
}


def _scalar(python: type, value: Any) -> Any:
    """A validated value as its column's type (jsonschema counts 3.0 as an integer; JSON has no other surprises)."""
    if value is None or isinstance(value, bool) != (python is bool):
        return None
    try:
        return python(value)
    except (TypeError, ValueError):
        return None


def _as_json_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object, or the first one in it (models that ignore response_format add words and fences)."""
    text = text.strip()
    try:
        whole = json.loads(text)
        return whole if isinstance(whole, dict) else None
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return None


def is_strict(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes the schema: every object closed (additionalProperties false) and all its
    properties required. A schema that is not is sent with strict false, which providers follow as best they can."""
    if isinstance(schema, list):
        return all(is_strict(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(properties):
            return False
    children = [sub for key in ("properties", "$defs", "definitions") if isinstance(schema.get(key), dict)
                for sub in schema[key].values()]
    children += [schema["items"]] if "items" in schema else []
    children += schema["anyOf"] if isinstance(schema.get("anyOf"), list) else []
    return all(is_strict(child) for child in children)
