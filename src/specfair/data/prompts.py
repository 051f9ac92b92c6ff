"""Texts to token ids: evaluation prompts (templates, chat format, context cut) and training texts."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from specfair.data.rows import Prompt, Row
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)


def train_text(row: Row, cfg: DictConfig) -> str:
    return cfg.get("train_template", "{text}").format(text=row.text, target=row.target)


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
    chat = bool(cfg.get("chat")) and getattr(tokenizer, "chat_template", None)

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
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
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
