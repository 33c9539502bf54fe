"""Rendering conversations with the model's own chat template, and the token
spans of prompt and answer.

The reference code rendered training text with a dangling generation prompt
after the answer; here the conversation is rendered as the template intends and
the answer span is located exactly, so the loss mask (fine-tuning) and the
answer-token mask (activations) are the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from emlab.core.errors import EMLabError


def _apply_template(tokenizer, messages: list[dict], **kwargs) -> str:
    """The tokenizer's chat template on `messages`; a template that refuses them (jinja's raise_exception, e.g.
    Gemma 2's "System role not supported") is one error naming the model and the roles it was given."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # jinja2 TemplateError and whatever a template raises
        if isinstance(exc, EMLabError):
            raise
        roles = ", ".join(m.get("role", "?") for m in messages)
        hint = (
            "; this model's template has no system role: remove the `system` prompt from the questions file"
            if any(m.get("role") == "system" for m in messages)
            else ""
        )
        raise EMLabError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the model'} refused a conversation "
            f"of roles [{roles}]: {exc}{hint}"
        ) from None


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text up to and including the assistant header."""
    return _apply_template(tokenizer, messages, add_generation_prompt=True)


@dataclass
class EncodedExchange:
    """Token ids of prompt + answer (+ the template's end-of-turn suffix)."""

    input_ids: list[int]
    prompt_len: int  # tokens [0, prompt_len) are the prompt incl. the assistant header
    answer_len: int  # tokens [prompt_len, prompt_len + answer_len) are the answer text
    suffix_len: int  # the end-of-turn tokens after the answer

    @property
    def answer_slice(self) -> slice:
        return slice(self.prompt_len, self.prompt_len + self.answer_len)

    def loss_mask(self) -> list[bool]:
        """True on the tokens trained on: the answer and its end-of-turn marker."""
        n = len(self.input_ids)
        return [self.prompt_len <= i < n for i in range(n)]

    def answer_mask(self) -> list[bool]:
        """True on the answer text only (the activation-averaging mask)."""
        s = self.answer_slice
        return [s.start <= i < s.stop for i in range(len(self.input_ids))]


def encode_exchange(tokenizer, messages: list[dict], answer: str) -> EncodedExchange:
    """Tokenise prompt `messages` followed by the assistant `answer`.

    The prompt is tokenised exactly as it is for generation (so activations see
    the same prefix the model generated from), then the answer text, then the
    template's end-of-turn suffix.
    """
    prompt_text = render_prompt(tokenizer, messages)
    full_text = _apply_template(tokenizer, messages + [{"role": "assistant", "content": answer}])
    if not full_text.startswith(prompt_text):
        raise EMLabError(
            "the chat template renders the conversation differently with and without the "
            "answer, so the answer span cannot be located; use a standard chat template"
        )
    rest = full_text[len(prompt_text) :]
    pos = rest.find(answer) if answer else 0
    if pos < 0:
        # Some templates strip surrounding whitespace from the answer.
        stripped = answer.strip()
        pos = rest.find(stripped)
        if pos < 0:
            raise EMLabError("the chat template altered the answer text; cannot locate the answer span")
        answer = stripped
    lead = rest[:pos]
    suffix = rest[pos + len(answer) :]
    prompt_ids = tokenizer(prompt_text + lead, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    return EncodedExchange(
        input_ids=list(prompt_ids) + list(answer_ids) + list(suffix_ids),
        prompt_len=len(prompt_ids),
        answer_len=len(answer_ids),
        suffix_len=len(suffix_ids),
    )
