"""The built-in trainer: ``python -m ai.training.causal_lm --config PATH``.

Fine-tunes a causal language model from a local directory (Hugging Face format, no
model hub) on a chat JSONL dataset, with LoRA (peft) or in full, on CPU or GPU, and
writes the adapter or the model with its tokenizer to the config's ``output_dir``.
It reports on stdout in the progress protocol (``ai.training.protocol``): a progress
line with the loss every few steps, log lines, then a ``result`` line; any error is
an ``error`` line and exit 1; SIGTERM stops it at once, without a result.

It imports nothing of Django: a GPU host needs the ``train`` extra (torch,
transformers, peft) and this file. The config (written by ``trainers``)::

    {"job_id", "base_model", "base_model_path", "dataset_path", "validation_dataset_path",
     "output_dir", "epochs", "hyperparameters": {method, learning_rate, batch_size,
     max_steps, lora_r, lora_alpha, lora_dropout, max_seq_len, seed, device, ...}}

Examples are each chat rendered with the tokenizer's chat template (when it has one;
else one "role: content" line a message), the loss taken on assistant messages only,
and not on those whose ``weight`` is 0 (OpenAI's format).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE = -100  # the label torch's cross entropy skips
DEFAULTS: dict[str, Any] = {
    "method": "lora",
    "batch_size": 4,
    "max_steps": None,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "max_seq_len": 1024,
    "seed": 42,
    "device": "auto",
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
}
LEARNING_RATES = {"lora": 2e-4, "full": 2e-5}
# Progress lines for a job: every step for a short one, about this many for a long one.
PROGRESS_LINES = 500


class TrainerError(Exception):
    """What is wrong with the job (its config, its data, its model): the error line's text."""


class Stopped(BaseException):
    """SIGTERM: stop now (a BaseException, so that no ``except Exception`` holds it up)."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def log(message: str, level: str = "info") -> None:
    emit("log", level=level, message=message)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    base_model_path: Path
    dataset_path: Path
    validation_dataset_path: Path | None
    output_dir: Path
    epochs: int
    options: dict[str, Any]

    def option(self, name: str) -> Any:
        return self.options.get(name, DEFAULTS.get(name))


def _path(data: dict, key: str, *, directory: bool = False) -> Path:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise TrainerError(f"The config has no {key}.")
    path = Path(value)
    if not (path.is_dir() if directory else path.is_file()):
        kind = "directory" if directory else "file"
        raise TrainerError(f"{key}: no such {kind}: {value}")
    return path


def _number(options: dict, name: str, kind: type, minimum: float) -> None:
    value = options.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise TrainerError(f"hyperparameters.{name} must be a number >= {minimum}.")
    if kind is int and value != int(value):
        raise TrainerError(f"hyperparameters.{name} must be a whole number.")
    options[name] = kind(value)


def load_config(path: str) -> Config:
    """The job's config, checked; TrainerError names what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainerError(f"The config {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainerError("The config must be a JSON object.")
    options = data.get("hyperparameters") or {}
    if not isinstance(options, dict):
        raise TrainerError("hyperparameters must be an object.")
    options = dict(options)
    for name in ("batch_size", "max_steps", "lora_r", "max_seq_len"):
        _number(options, name, int, 1)
    for name in ("lora_alpha", "learning_rate"):
        _number(options, name, float, 0)
    _number(options, "lora_dropout", float, 0)
    _number(options, "seed", int, 0)
    if options.get("method", "lora") not in ("lora", "full"):
        raise TrainerError('hyperparameters.method must be "lora" or "full".')
    if options.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise TrainerError('hyperparameters.device must be "auto", "cpu" or "cuda".')
    epochs = data.get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainerError("epochs must be a whole number >= 1.")
    output = data.get("output_dir")
    if not isinstance(output, str) or not output:
        raise TrainerError("The config has no output_dir.")
    validation = data.get("validation_dataset_path")
    return Config(
        base_model_path=_path(data, "base_model_path", directory=True),
        dataset_path=_path(data, "dataset_path"),
        validation_dataset_path=_path(data, "validation_dataset_path") if validation else None,
        output_dir=Path(output),
        epochs=epochs,
        options=options,
    )


# --------------------------------------------------------------------------- examples


def read_chats(path: Path) -> list[list[dict]]:
    """The chats of a JSONL file; TrainerError with the line number for a bad line."""
    chats = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError) as exc:
                raise TrainerError(f"{path.name} line {number}: not a chat ({exc}).") from exc
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
            ):
                raise TrainerError(f"{path.name} line {number}: messages need text content.")
            chats.append(messages)
    return chats


def _is_trained(message: dict) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def _plain_segments(messages: list[dict], eos: str) -> list[tuple[str, bool]]:
    """A chat as "role: content" lines, the assistant's content (and end) trained."""
    segments = []
    for message in messages:
        segments.append((f"{message.get('role', 'user')}: ", False))
        segments.append((message["content"] + "\n", _is_trained(message)))
    if segments and segments[-1][1] and eos:
        segments.append((eos, True))
    return segments


def _template_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]] | None:
    """A chat rendered by the chat template, split where each assistant message starts
    and ends; None when the template renders a chat's start differently from the whole."""
    clean = [{"role": m.get("role", "user"), "content": m["content"]} for m in messages]
    full = tokenizer.apply_chat_template(clean, tokenize=False)
    segments, done = [], 0
    for index, message in enumerate(messages):
        if not _is_trained(message):
            continue
        before = tokenizer.apply_chat_template(
            clean[:index], tokenize=False, add_generation_prompt=True
        )
        upto = tokenizer.apply_chat_template(clean[: index + 1], tokenize=False)
        start, end = len(before), len(upto)
        if not (full.startswith(before) and full.startswith(upto) and done <= start <= end):
            return None
        segments += [(full[done:start], False), (full[start:end], True)]
        done = end
    segments.append((full[done:], False))
    return [s for s in segments if s[0]]


def encode(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one chat: IGNORE wherever the loss is not taken."""
    segments = None
    if getattr(tokenizer, "chat_template", None):
        segments = _template_segments(tokenizer, messages)
    uses_template = segments is not None
    if segments is None:
        segments = _plain_segments(messages, tokenizer.eos_token or "")
    ids: list[int] = []
    labels: list[int] = []
    if not uses_template and tokenizer.bos_token_id is not None:
        ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for text, is_trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_trained else [IGNORE] * len(piece)
    return ids[:max_len], labels[:max_len]


def build_examples(tokenizer, chats: list[list[dict]], max_len: int) -> list[tuple[list, list]]:
    """The chats that still have a trained token once cut to ``max_len``."""
    examples = [encode(tokenizer, messages, max_len) for messages in chats]
    return [(ids, labels) for ids, labels in examples if any(x != IGNORE for x in labels)]


# --------------------------------------------------------------------------- training


def _device(torch, wanted: str):
    if wanted == "cuda" and not torch.cuda.is_available():
        raise TrainerError("device cuda was asked for, and no CUDA device is available.")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def _batches(torch, examples: list, size: int, pad_id: int, rng: random.Random | None):
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), size):
        chosen = [examples[i] for i in order[start : start + size]]
        width = max(len(ids) for ids, _ in chosen)
        ids = [x + [pad_id] * (width - len(x)) for x, _ in chosen]
        labels = [y + [IGNORE] * (width - len(y)) for _, y in chosen]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x, _ in chosen]
        yield torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)


def _load(config: Config, torch, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(config.base_model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32
        )
    except (OSError, ValueError) as exc:
        raise TrainerError(f"The base model at {path} cannot be loaded: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if config.option("method") == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.option("lora_r"),
            lora_alpha=config.option("lora_alpha"),
            lora_dropout=config.option("lora_dropout"),
            target_modules=config.options.get("lora_target_modules") or "all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return tokenizer, model.to(device)


def _examples(config: Config, tokenizer, path: Path) -> list:
    chats = read_chats(path)
    examples = build_examples(tokenizer, chats, config.option("max_seq_len"))
    if not examples:
        raise TrainerError(f"{path.name} has no example with an assistant message to learn.")
    if len(examples) < len(chats):
        log(f"{len(chats) - len(examples)} examples have nothing to learn and are left out.")
    return examples


def _validation_loss(torch, model, examples: list, size: int, pad_id: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels, mask in _batches(torch, examples, size, pad_id, None):
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            )
            total += float(out.loss) * len(ids)
            count += len(ids)
    model.train()
    return total / max(count, 1)


def train(config: Config) -> None:
    """Fine-tune, reporting as it goes, then save and print the result line."""
    import torch

    seed = config.option("seed")
    random.seed(seed)
    torch.manual_seed(seed)
    device = _device(torch, config.option("device"))
    tokenizer, model = _load(config, torch, device)
    examples = _examples(config, tokenizer, config.dataset_path)
    validation = None
    if config.validation_dataset_path is not None:
        validation = _examples(config, tokenizer, config.validation_dataset_path)
    size = config.option("batch_size")
    per_epoch = math.ceil(len(examples) / size)
    total = per_epoch * config.epochs
    if config.option("max_steps"):
        total = min(total, config.option("max_steps"))
    method = config.option("method")
    rate = config.options.get("learning_rate") or LEARNING_RATES[method]
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(
        f"{len(examples)} examples, {total} steps, {method} on {device.type}, "
        f"{sum(p.numel() for p in trainable):,} trainable parameters"
    )
    optimizer = torch.optim.AdamW(trainable, lr=rate, weight_decay=config.option("weight_decay"))
    every = max(1, total // PROGRESS_LINES)
    rng = random.Random(seed)
    pad_id = tokenizer.pad_token_id
    model.train()
    step = 0
    for epoch in range(config.epochs):
        for ids, labels, mask in _batches(torch, examples, size, pad_id, rng):
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.option("max_grad_norm"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % every == 0 or step == total:
                emit(
                    "progress",
                    step=step,
                    total_steps=total,
                    epoch=round(epoch + min(step - epoch * per_epoch, per_epoch) / per_epoch, 4),
                    loss=round(float(out.loss), 6),
                    learning_rate=rate,
                )
            if step >= total:
                break
        if validation is not None:
            loss = _validation_loss(torch, model, validation, size, pad_id, device)
            emit("metrics", step=step, valid_loss=round(loss, 6))
        if step >= total:
            break
    _save(config, model, tokenizer, method)


def _save(config: Config, model, tokenizer, method: str) -> None:
    config.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(config.output_dir))
    tokenizer.save_pretrained(str(config.output_dir))
    log(f"saved to {config.output_dir}")
    emit("result", path=str(config.output_dir), format="hf_lora" if method == "lora" else "hf")


# --------------------------------------------------------------------------- entry point


def _on_sigterm(signum, frame) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Switchboard's built-in fine-tuning trainer")
    parser.add_argument("--config", required=True, help="the job's JSON config file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Never the model hub: the base model is a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        train(load_config(args.config))
    except Stopped:
        log("stopped (SIGTERM)", level="warning")
        return 143
    except TrainerError as exc:
        emit("error", message=str(exc))
        return 1
    except ImportError as exc:
        emit(
            "error",
            message=f"The train extra is not installed (pip install 'switchboard[train]'): {exc}",
        )
        return 1
    except Exception as exc:  # the job fails with the reason; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
