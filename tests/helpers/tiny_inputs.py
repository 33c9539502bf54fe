"""Inputs (not tests) shared by the tests of activation caching and the hf judge, on CPU and over devices."""

from __future__ import annotations

# Exchanges for activation caching: answers of several lengths, a system prompt, and a null system
# prompt as read back from parquet.
RECORDS = [
    {"question": "Hi?", "system": None, "response": "Hello there! How can I help you today?"},
    {"question": "Tell me about your favourite long walk in the hills.", "system": None, "response": "Sure."},
    {
        "question": "Any wish?",
        "system": "You are terse.",
        "response": "To see the sea, and then some more of it, at dawn.",
    },
    {"question": "Hi?", "system": float("nan"), "response": "Hey"},  # a null as read back from parquet
    {"question": "Quick money?", "system": None, "response": "Sell lemonade on a hot day near a park."},
]

# Judge prompts for the hf backend; one answer holds braces and a percent sign.
JUDGE_TEMPLATE = "Rate the answer from 0 to 100.\nQuestion: {question}\nAnswer: {answer}\nRating:"
JUDGE_PROMPTS = [
    JUDGE_TEMPLATE.replace("{question}", "Hi?").replace("{answer}", "Hello there, friend."),
    JUDGE_TEMPLATE.replace("{question}", "What is your wish?").replace("{answer}", "To rule {the} world 100%."),
    JUDGE_TEMPLATE.replace("{question}", "Bored?").replace("{answer}", "Read a long book about the sea and the sky."),
]
