"""The request bodies as pydantic models, and how a field that fails validation is reported.

FastAPI validates `ChatRequest` / `CompletionRequest`; `describe` turns the first pydantic
error into the OpenAI-style (code, param, message) the server has always answered with, so
a client sees `{"error": {"code": "invalid_value", "param": "temperature", ...}}` and not
pydantic's own wording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from emosteer import protocol
from emosteer.generation import sampling_temperature

__all__ = ["ChatRequest", "CompletionRequest", "Message", "StreamOptions", "TextPart",
           "describe"]

Role = Literal["system", "developer", "user", "assistant"]  # developer = system (OpenAI's o1+)
RANGES = {"temperature": (0.0, 2.0),  # OpenAI's range
          "top_p": (0.0, 1.0),
          "repetition_penalty": (0.5, 2.0)}  # 1.0 = off; beyond 2 the text breaks up
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "echo", "logit_bias")


def _utf8(text: str) -> str:
    """JSON may escape a lone surrogate ("\\udc80"), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"has a lone surrogate ({text[err.start]!r} at character "
                         f"{err.start}): send valid Unicode text") from None
    return text


def _absent(value: Any) -> Any:
    if value:
        raise ValueError("not supported")
    return value


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _single_prompt(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(_utf8)]
Count = Annotated[int, Field(strict=True, ge=1)] | None
Unsupported = Annotated[Any, AfterValidator(_absent)]
Off = Annotated[float, Field(strict=True, ge=0, le=0)] | None  # only 0 (= not used) passes
# parsed and checked by the contract both engines share (protocol.py)
Emotion = Annotated[dict[str, float] | None, BeforeValidator(protocol.emotion_weights)]
Meter = Annotated[bool, BeforeValidator(protocol.parse_meter)]
Stop = Annotated[Annotated[list[Text], Field(max_length=4)] | None, BeforeValidator(_one_or_list)]


def _within(name: str) -> Any:
    low, high = RANGES[name]
    return Field(strict=True, allow_inf_nan=False, ge=low, le=high)


# a positive temperature below generation.GREEDY_BELOW is greedy (0), as on vLLM's path
Temperature = Annotated[float, _within("temperature"), AfterValidator(sampling_temperature)]
TopP = Annotated[float, _within("top_p")]
Penalty = Annotated[float, _within("repetition_penalty")]


class TextPart(BaseModel):
    """An OpenAI content part; only text is served."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    """One chat message: {"role": "user", "content": "..." or [{"type": "text", ...}]}."""

    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: ignored
    role: Role
    content: Text | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """`stream_options`: include_usage adds a usage chunk before [DONE]."""

    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class _Request(BaseModel):
    """The fields both endpoints take (OpenAI's, plus emosteer's emotion, penalty, meter and
    judge)."""

    model_config = ConfigDict(extra="allow")  # user, metadata, ...: accepted and ignored
    model: str | None = None  # not checked: the server answers with its one model
    n: Literal[1] | None = None
    logprobs: Unsupported = None
    top_logprobs: Unsupported = None
    tools: Unsupported = None
    functions: Unsupported = None
    echo: Unsupported = None
    logit_bias: Unsupported = None
    frequency_penalty: Off = None
    presence_penalty: Off = None
    emotion: Emotion = None
    max_tokens: Count = None
    max_completion_tokens: Count = None
    stop: Stop = None
    seed: Annotated[int, Field(strict=True)] | None = None
    temperature: Temperature | None = None  # None: the server's default (ServeConfig.defaults)
    top_p: TopP | None = None
    repetition_penalty: Penalty | None = None
    stream: StrictBool = False
    meter: Meter = False  # per-token emotion readings in the answer (off: no cost)
    judge: StrictBool = False  # the embedded judge's verdict on the whole answer (off: no cost)
    stream_options: StreamOptions | None = None

    def requested_tokens(self) -> int | None:
        """max_completion_tokens (OpenAI's newer name) or max_tokens; None when neither."""
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_Request):
    """POST /v1/chat/completions.

    Example:
        ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}],
                                    "emotion": {"joy": 1.5}})
    """

    messages: Annotated[list[Message], Field(min_length=1)]


class CompletionRequest(_Request):
    """POST /v1/completions: one prompt string (a list holding one string is accepted).

    Example:
        CompletionRequest.model_validate({"prompt": "Once upon a time", "max_tokens": 16})
    """

    prompt: Annotated[Annotated[Text, Field(min_length=1)], BeforeValidator(_single_prompt)]


def describe(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None, str]:
    """(code, param, message) in the server's OpenAI-style wording for the first error.

    Args:
        errors: `RequestValidationError.errors()` (locations start with "body").

    Example:
        describe([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}])
        # ("invalid_messages", "messages", "'messages' must be a non-empty list of ...")
    """
    err = errors[0]
    loc = tuple(err.get("loc", ()))[1:]
    if err.get("type") == "json_invalid" or not loc or not isinstance(loc[0], str):
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed")
            where = f" at character {loc[0]}" if loc else ""
            return "invalid_json", None, f"the request body is not valid JSON ({reason}{where})"
        return "invalid_json", None, "the request body must be a JSON object"
    field = loc[0]
    if field == "messages":
        return "invalid_messages", "messages", _messages_error(loc, errors)
    if field == "emotion":
        return _emotion_error(err)
    if field == "meter":
        return "invalid_type", "meter", _reason(err)
    if field in RANGES:
        low, high = RANGES[field]
        return "invalid_value", field, (f"'{field}' must be a number in [{low:g}, {high:g}], "
                                        f"got {_shown(err.get('input'))}")
    return _FIELDS.get(field, _other)(field, err)


def _messages_error(loc: tuple, errors: Sequence[Mapping[str, Any]]) -> str:
    if len(loc) < 2:
        return "'messages' must be a non-empty list of {role, content}"
    i = loc[1]
    mine = [e for e in errors if tuple(e.get("loc", ()))[1:3] == ("messages", i)]
    where = [tuple(e["loc"])[3:] for e in mine]
    if not any(w[:1] == ("content",) for w in where):
        return f"messages[{i}] needs a role of system, user or assistant"
    if any(w[-1:] == ("type",) and e["type"] == "literal_error" for w, e in zip(where, mine,
                                                                               strict=True)):
        return f"messages[{i}] has a non-text part: only text is served"
    for e in mine:
        if e["type"] == "value_error":
            return f"messages[{i}].content {_reason(e)}"
    return (f"messages[{i}].content must be a string or a list of "
            '{"type": "text", "text": ...} parts')


def _emotion_error(err: Mapping[str, Any]) -> tuple[str, str | None, str]:
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, Exception):  # raised by protocol.emotion_weights
        return protocol.error_code(error), "emotion", str(error)
    return "invalid_emotion", "emotion", ('\'emotion\' must be an object such as {"joy": 1.5, '
                                          '"anger": -0.5} or an emotion name')


def _reason(err: Mapping[str, Any]) -> str:
    error = (err.get("ctx") or {}).get("error")
    return str(error) if error is not None else str(err.get("msg", "is invalid"))


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)  # repr escapes lone surrogates, so the answer always encodes
    return text if len(text) <= limit else text[:limit] + "..."


def _other(field: str, err: Mapping[str, Any]) -> tuple[str, str | None, str]:
    return "invalid_value", field, f"'{field}' is invalid: {err.get('msg', 'bad value')}"


def _rule(code: str, message: str, param: str | None = None) -> Any:
    def rule(field: str, err: Mapping[str, Any]) -> tuple[str, str | None, str]:
        text = message.format(field=field)
        if err.get("type") == "value_error" and field in ("prompt", "stop"):
            text = f"'{field}' {_reason(err)}"
        return code, param or field, text
    return rule


_PENALTY = ("'{field}' is not supported: use 'repetition_penalty' (1.0 = off, 1.15 = "
            "emosteer's default)")
_FIELDS = {
    "prompt": _rule("invalid_prompt", "'prompt' must be a non-empty string (one prompt per "
                    "request)"),
    "n": _rule("unsupported_parameter", "only n=1 is supported: send one request per "
               "completion"),
    **{key: _rule("unsupported_parameter", "'{field}' is not supported by emosteer's server")
       for key in UNSUPPORTED},
    "frequency_penalty": _rule("unsupported_parameter", _PENALTY),
    "presence_penalty": _rule("unsupported_parameter", _PENALTY),
    "max_tokens": _rule("invalid_value", "'max_tokens' must be a positive integer"),
    "max_completion_tokens": _rule("invalid_value", "'max_tokens' must be a positive integer",
                                   "max_tokens"),
    "stop": _rule("invalid_value", "'stop' must be a string or a list of up to 4 strings"),
    "seed": _rule("invalid_value", "'seed' must be an integer"),
    "stream": _rule("invalid_type", "'stream' must be true or false"),
    "judge": _rule("invalid_type", "'judge' must be true or false"),
    "stream_options": _rule("invalid_type", "'stream_options' must be an object such as "
                            '{{"include_usage": true}}'),
    "model": _rule("invalid_value", "'model' must be a string (any name: the server answers "
                   "with its one model)"),
}
