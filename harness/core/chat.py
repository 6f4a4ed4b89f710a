"""Chat formatting: an instruct model's own chat template (Jinja, rendered the way transformers renders
it) turns a user message into the prompt the model was tuned on, so completion and instruct
behaviour can be compared on the same prompts."""

from __future__ import annotations

import json


def render_chat(template: str, user: str, system: str | None = None, *, bos_token: str = "",
                eos_token: str = "") -> str:
    """The text of a one-turn conversation up to where the assistant's answer starts."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos_token,
                                            eos_token=eos_token)
