"""Training examples for dataset tests: valid JSONL lines to build files from."""

import json


def chat_line(question: str = "What is 2+2?", answer: str = "4", **extra) -> str:
    """One valid training example (OpenAI's chat fine-tuning format) as a JSONL line."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return json.dumps({"messages": messages, **extra})


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()
