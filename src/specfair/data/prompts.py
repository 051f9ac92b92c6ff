"""Texts to token ids: evaluation prompts (templates, chat format, context cut) and training texts."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from specfair.data.rows import Prompt, Row
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)


def train_text(row: Row, cfg: DictConfig) -> str:
    return cfg.get("train_template", "{text}").format(text=row.text, target=row.target)


def uses_chat(tokenizer, cfg: DictConfig) -> bool:
    """dataset.chat and a tokenizer that has a chat template."""
    return bool(cfg.get("chat")) and bool(getattr(tokenizer, "chat_template", None))


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A conversation in the tokenizer's chat template, ending where the assistant's answer starts."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def prompt_content(text: str, tokenizer, cfg: DictConfig) -> str:
    """One user message as `tokenize_prompts` builds it in chat mode: the text cut to fit, in the template."""
    template = cfg.get("prompt_template", "{text}")
    prefix, suffix = template.split("{text}", 1)

    def encode(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    room = int(cfg.prompt_tokens) - len(encode(prefix)) - len(encode(suffix))
    return prefix + tokenizer.decode(encode(text)[: max(room, 1)]) + suffix


def tokenize_prompts(rows: list[Row], tokenizer, cfg: DictConfig, max_prompt_tokens: int) -> list[Prompt]:
    """First `prompt_tokens` tokens of each text inside `prompt_template` (and the chat template if asked).

    A prompt longer than the model's context keeps its last `max_prompt_tokens` tokens, with a warning.
    """
    prompt_tokens = int(cfg.prompt_tokens)
    if prompt_tokens < 1:
        raise SpecfairError(f"dataset.prompt_tokens={prompt_tokens}: must be >= 1")
    template = cfg.get("prompt_template", "{text}")
    if "{text}" not in template:
        raise SpecfairError(f"dataset.prompt_template={template!r} must contain {{text}}")
    prefix, suffix = template.split("{text}", 1)
    chat = uses_chat(tokenizer, cfg)

    def encode(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    frame = len(encode(prefix)) + len(encode(suffix))
    room = prompt_tokens - frame
    if room < 1:
        raise SpecfairError(
            f"dataset.prompt_tokens={prompt_tokens} leaves no room for text in the prompt template"
        )
    prompts, truncated = [], 0
    for row in rows:
        body = encode(row.text)[:room]
        if chat:
            content = prefix + tokenizer.decode(body) + suffix
            ids = chat_ids(tokenizer, [{"role": "user", "content": content}])
        else:
            ids = encode(prefix) + body + encode(suffix)
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated += 1
        prompts.append(Prompt(row.id, row.category, row.text, ids))
    if truncated:
        log.warning(
            "%d prompts exceed the model context: kept their last %d tokens", truncated, max_prompt_tokens
        )
    return prompts
