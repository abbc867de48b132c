"""A local causal LM behind an OpenAI-compatible HTTP endpoint (``kdatlas serve-teacher``).

Black-box distillation talks to its teacher only through text over HTTP. Serving the embedded
teacher (or any local model) with the same wire format as OpenAI, vLLM, TGI or llama.cpp lets
the whole black-box pipeline run, and be tested, over real HTTP on 127.0.0.1.

Endpoints (the standard library's ``ThreadingHTTPServer``, no extra dependency):

* ``GET /v1/models`` and ``GET /v1/models/{name}``: the one served model.
* ``POST /v1/completions``: ``prompt`` (a string or a list of strings), ``max_tokens``,
  ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs`` (top-k alternatives, 0-20).
* ``POST /v1/chat/completions``: ``messages`` plus the same sampling fields; ``logprobs`` is a
  boolean and ``top_logprobs`` the number of alternatives.

**Chat template.** A model with a chat template gets it. The embedded teachers have none and are
trained on plain prompts, so messages are rendered in the instruction suite's conversation
format (`reference_impls.teachers.text.plain_chat_prompt`): system messages first, then each
user turn followed directly by the assistant's reply, one turn per line; the last message must
be the user's. A conversation of a single user message is exactly that message.

**Generation** is `reference_impls.teachers.text.LocalTeacher`'s, so a request gives the same
text over HTTP as the same request made locally. Temperature 0 is greedy decoding; otherwise
sampling at that temperature with nucleus ``top_p``, choice ``k`` seeded ``seed + k`` (a fresh
random seed when the request has none), so a seeded request is reproducible. ``stop`` strings cut
the text (``finish_reason`` ``"stop"``). ``usage.completion_tokens`` counts the token that ended a
choice (EOS) too, as vLLM does. Log-probs are those of the model's raw distribution (temperature
1, no top-p), as vLLM reports them by default. Requests are served concurrently but the model
runs one call at a time behind the teacher's lock; the prompts of one request are batched.

**Limits and errors.** ``max_tokens`` defaults to, and may not exceed, the server's
``max_new_tokens``; prompt plus completion must fit the model's context. Malformed requests get
OpenAI-style JSON errors ``{"error": {"message", "type", "code", "param"}}``: 400 (bad JSON,
missing or mistyped fields, unknown model), 401 (wrong bearer token when a key is set), 404
(unknown path), 405 (wrong method), 413 (body over 1 MiB). The key is never logged.

**Layout.** `params` reads a request (configuration, sampling fields, prompts, messages: pure
functions of the JSON body), `responses` writes the answer bodies, `app` is the HTTP server that
joins them to the model. The names below are re-exported here, so callers import the package.
"""

from __future__ import annotations

from reference_impls.teachers.server.app import (
    MAX_BODY_BYTES,
    TeacherServer,
    load_served_model,
    make_server,
    serve_in_thread,
)
from reference_impls.teachers.server.params import (
    CHAT_ROLES,
    EMBEDDED_NAME,
    MAX_CHOICES,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    ApiError,
    SamplingParams,
    ServerConfig,
    check_bind_host,
    check_model,
    parse_messages,
    parse_prompts,
    parse_sampling,
    read_api_key,
    render_chat_prompt,
)
from reference_impls.teachers.server.responses import Choice

__all__ = [
    "CHAT_ROLES",
    "EMBEDDED_NAME",
    "MAX_BODY_BYTES",
    "MAX_CHOICES",
    "MAX_STOP_STRINGS",
    "MAX_TOP_LOGPROBS",
    "ApiError",
    "Choice",
    "SamplingParams",
    "ServerConfig",
    "TeacherServer",
    "check_bind_host",
    "check_model",
    "load_served_model",
    "make_server",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
    "read_api_key",
    "render_chat_prompt",
    "serve_in_thread",
]
