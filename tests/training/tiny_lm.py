"""A tiny causal LM built in the test (a 2-layer Llama of hidden size 32, a word-level
tokenizer trained on the facts below, with a chat template): no model hub. Shared by
the built-in trainer's tests and the end-to-end test. Needs the ``train`` extra."""

from pathlib import Path

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
FACTS = [
    ("sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("blood", "red"),
    ("sun", "yellow"),
    ("sea", "blue"),
    ("night", "dark"),
]


def chat(thing: str, colour: str, **assistant) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "answer with a colour"},
            {"role": "user", "content": f"what colour is the {thing}"},
            {"role": "assistant", "content": f"the {thing} is {colour}", **assistant},
        ]
    }


def make_tokenizer(texts: list[str], *, template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL[4:],
    )
    if template:
        tokenizer.chat_template = TEMPLATE
    return tokenizer


def build(path: Path) -> Path:
    """Save a tiny causal LM and its tokenizer as a Hugging Face directory at ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [m["content"] for t, c in FACTS for m in chat(t, c)["messages"]]
    tokenizer = make_tokenizer(texts + ["user assistant system"])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        # Weights of a trained model's scale (not 0.02): LoRA can then move the logits.
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
