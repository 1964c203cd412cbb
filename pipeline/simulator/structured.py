"""Structured answers as a provider gives them: `response_format` checked as OpenAI checks it, a JSON answer that
follows the schema (filled from what the image shows), and the ways real ones go wrong.

With `ignore_response_format` the simulator is Anthropic's OpenAI layer, which documents response_format as
ignored: it answers prose, unless the prompt itself asks for JSON after a schema, when it answers as such models
do, a sentence and then the object in a fenced block. `invalid_answers` N: the first N structured answers to each
image break the schema (a required property left out, or no JSON at all).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.simulator.request import BadRequest

# The words after which a prompt holds a schema (pipeline.structured writes them; any prompt may).
_SCHEMA_IN_PROMPT = re.compile(r"JSON Schema:\s*(?=\{)")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def response_format_schema(value: Any) -> dict[str, Any] | None:
    """The schema a request's response_format asks for (None for text or json_object); BadRequest as OpenAI words it."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise BadRequest("Invalid value for 'response_format.type': expected one of 'text', 'json_object', 'json_schema'.",
                         "invalid_value", param="response_format.type")
    if value["type"] != "json_schema":
        return None
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest("Missing required parameter: 'response_format.json_schema.name'.", "missing_required_parameter",
                         param="response_format.json_schema.name")
    if not _NAME.match(spec["name"]):
        raise BadRequest("Invalid 'response_format.json_schema.name': string does not match pattern '^[a-zA-Z0-9_-]+$'.",
                         "invalid_value", param="response_format.json_schema.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise BadRequest("Invalid type for 'response_format.json_schema.schema': expected an object.", "invalid_type",
                         param="response_format.json_schema.schema")
    if spec.get("strict"):
        problem = _strict_problem(schema, ())
        if problem:
            raise BadRequest(f"Invalid schema for response_format '{spec['name']}': {problem}", None, param="response_format")
    return schema


def _strict_problem(schema: Any, context: tuple[str, ...]) -> str | None:
    """What OpenAI's strict mode refuses: an object not closed, or with a property that is not required."""
    if not isinstance(schema, dict):
        return None
    where = f"In context=({', '.join(repr(c) for c in context)})"
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{where}, 'additionalProperties' is required to be supplied and to be false."
        missing = [name for name in schema.get("properties") or {} if name not in (schema.get("required") or [])]
        if missing:
            return f"{where}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing[0]}'."
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if problem := _strict_problem(sub, (*context, key, name)):
                return problem
    for key in ("items",):
        if problem := _strict_problem(schema.get(key), (*context, key)):
            return problem
    return None


def schema_in_prompt(texts: list[str]) -> dict[str, Any] | None:
    """A schema the prompt spells out after 'JSON Schema:', as a model that reads the prompt would follow it."""
    for text in texts:
        match = _SCHEMA_IN_PROMPT.search(text)
        if match:
            try:
                schema, _ = json.JSONDecoder().raw_decode(text, match.end())
            except ValueError:
                continue
            if isinstance(schema, dict):
                return schema
    return None


def structured_answer(schema: dict[str, Any], caption: str, *, invalid: bool = False, chatty: bool = False) -> str:
    """A JSON answer for `schema` made of the caption's words; `invalid`: one that breaks it; `chatty`: words and a fence around it."""
    words = [w.strip(".,").lower() for w in caption.split() if len(w.strip(".,")) > 3] or ["image"]
    answer = _fill(schema, schema, caption, words, 0)
    if invalid:
        required = [name for name in schema.get("required") or [] if isinstance(answer, dict) and name in answer]
        if not required:
            return f"I looked at the image: {caption}"  # no JSON at all
        del answer[required[0]]
    text = json.dumps(answer, ensure_ascii=False)
    return f"Here is the annotation for this image.\n```json\n{text}\n```" if chatty else text


def _fill(schema: Any, root: dict[str, Any], caption: str, words: list[str], depth: int, name: str = "") -> Any:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/") and depth < 8:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _fill(target, root, caption, words, depth + 1, name)
    if not isinstance(schema, dict):
        return caption
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][len(caption) % len(schema["enum"])]
    for union in ("anyOf", "oneOf"):
        if schema.get(union):
            options = [s for s in schema[union] if not (isinstance(s, dict) and s.get("type") == "null")] or schema[union]
            return _fill(options[0], root, caption, words, depth + 1, name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {key: _fill(sub, root, caption, words, depth + 1, key) for key, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        low, high = schema.get("minItems", 2), schema.get("maxItems", 3)
        count = max(low, min(high, 2)) if depth < 6 else low
        return [_fill(schema.get("items", {}), root, words[i % len(words)], words[i:] + words[:i], depth + 1, name)
                for i in range(count)]
    if kind == "integer":
        return max(schema.get("minimum", 0), min(schema.get("maximum", 10**9), len(words)))
    if kind == "number":
        return float(max(schema.get("minimum", 0.0), min(schema.get("maximum", 1.0), 0.5 + 0.5 * (len(caption) % 2))))
    if kind == "boolean":
        return len(caption) % 2 == 0
    if kind == "null":
        return None
    text = caption if name in ("caption", "description", "summary", "text", "") or depth > 1 else words[0]
    return text[: schema["maxLength"]] if "maxLength" in schema else text
