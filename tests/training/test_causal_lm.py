"""The built-in trainer (python -m ai.training.causal_lm) on a tiny model built here.

The model (a 2-layer Llama of hidden size 32) and its tokenizer (a word-level one
trained on the dataset, with a chat template) are made in the test: no model hub.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="issue 16: the train extra (make install has it)")
transformers = pytest.importorskip("transformers", reason="issue 16: the train extra")

from ai.training import causal_lm, protocol  # noqa: E402
from tests.training import tiny_lm  # noqa: E402
from tests.training.tiny_lm import FACTS, chat, make_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny causal LM and its tokenizer, saved as a Hugging Face directory."""
    return tiny_lm.build(tmp_path_factory.mktemp("tiny-llama"))


def write_job(tmp_path: Path, base: Path, **hyperparameters) -> tuple[Path, Path]:
    dataset = tmp_path / "train.jsonl"
    dataset.write_text("".join(json.dumps(chat(t, c)) + "\n" for t, c in FACTS))
    output = tmp_path / "output"
    config = {
        "job_id": "ftjob-test",
        "base_model": "tiny",
        "base_model_path": str(base),
        "dataset_path": str(dataset),
        "validation_dataset_path": None,
        "output_dir": str(output),
        "epochs": 100,
        "hyperparameters": {"batch_size": 4, "max_steps": 30, "device": "cpu", **hyperparameters},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path, output


def run(config: Path) -> tuple[int, list[protocol.Line]]:
    done = subprocess.run(
        [sys.executable, "-m", "ai.training.causal_lm", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [protocol.parse(raw) for raw in done.stdout.splitlines()]
    return done.returncode, [line for line in lines if line is not None]


def losses(lines: list[protocol.Line]) -> list[float]:
    return [line.metrics["loss"] for line in lines if "loss" in line.metrics]


def assert_learned(code: int, lines: list[protocol.Line], output: Path, fmt: str) -> None:
    assert code == 0, [line.message for line in lines if line.event in ("log", "error")]
    progress = [line for line in lines if line.step is not None]
    assert [line.step for line in progress] == list(range(1, 31))
    assert progress[-1].total_steps == 30
    seen = losses(lines)
    assert sum(seen[-3:]) / 3 < 0.5 * (sum(seen[:3]) / 3), seen
    (result,) = [line for line in lines if line.event == "result"]
    assert result.path == str(output) and result.format == fmt


def generates(model, tokenizer) -> bool:
    prompt = tokenizer.apply_chat_template(
        chat("sky", "blue")["messages"][:2], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return out.shape[1] == ids.shape[1] + 3


def test_it_fine_tunes_with_lora_and_the_adapter_loads_over_its_base(tmp_path, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, output = write_job(tmp_path, base_model, method="lora", learning_rate=0.01)

    code, lines = run(config)

    assert_learned(code, lines, output, "hf_lora")
    assert (output / "adapter_config.json").is_file()
    assert not (output / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    model = PeftModel.from_pretrained(base, output, local_files_only=True)
    assert generates(model, AutoTokenizer.from_pretrained(output, local_files_only=True))


def test_it_fine_tunes_the_whole_model_and_the_output_loads(tmp_path, base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, output = write_job(tmp_path, base_model, method="full", learning_rate=0.003)

    code, lines = run(config)

    assert_learned(code, lines, output, "hf")
    model = AutoModelForCausalLM.from_pretrained(output, local_files_only=True)
    before = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)
    assert generates(model, AutoTokenizer.from_pretrained(output, local_files_only=True))


def test_it_imports_nothing_of_django_a_gpu_host_may_not_have():
    code = (
        "import sys, ai.training.causal_lm; "
        "sys.exit(any(m.split('.')[0] in ('django', 'panel') for m in sys.modules))"
    )

    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_a_missing_base_model_is_an_error_line_and_exit_1(tmp_path, base_model):
    config, output = write_job(tmp_path, base_model)
    data = json.loads(config.read_text())
    data["base_model_path"] = str(tmp_path / "nowhere")
    config.write_text(json.dumps(data))

    code, lines = run(config)

    assert code == 1
    assert [line.event for line in lines] == ["error"]
    assert lines[0].message == f"base_model_path: no such directory: {tmp_path / 'nowhere'}"
    assert not output.exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"epochs": 0}, "epochs must be a whole number >= 1."),
        (
            {"hyperparameters": {"method": "qlora"}},
            'hyperparameters.method must be "lora" or "full".',
        ),
        (
            {"hyperparameters": {"batch_size": -2}},
            "hyperparameters.batch_size must be a number >= 1.",
        ),
        ({"dataset_path": None}, "The config has no dataset_path."),
    ],
)
def test_a_bad_config_is_refused_with_its_reason(tmp_path, base_model, change, reason):
    config, _ = write_job(tmp_path, base_model)
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))

    with pytest.raises(causal_lm.TrainerError, match=reason.replace(".", r"\.")):
        causal_lm.load_config(str(config))


def test_a_dataset_with_nothing_to_learn_fails_the_job(tmp_path, base_model, capsys, monkeypatch):
    config, output = write_job(tmp_path, base_model)
    (tmp_path / "train.jsonl").write_text(json.dumps(chat("sky", "blue", weight=0)) + "\n")
    # In this process (torch is loaded already): main() sets these and a SIGTERM handler.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(signal, "signal", lambda *args: None)

    code = causal_lm.main(["--config", str(config)])

    lines = [protocol.parse(raw) for raw in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[-1].event == "error"
    assert lines[-1].message == "train.jsonl has no example with an assistant message to learn."
    assert not output.exists()


def test_sigterm_stops_it_promptly_without_a_result(tmp_path, base_model):
    config, output = write_job(tmp_path, base_model, max_steps=100000)
    process = subprocess.Popen(
        [sys.executable, "-m", "ai.training.causal_lm", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        for raw in process.stdout:  # training has started once a progress line is out
            if protocol.parse(raw).step is not None:
                break
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = process.wait(timeout=30)
        waited = time.monotonic() - started
    finally:
        process.kill()
        process.wait()
    rest = [protocol.parse(raw) for raw in process.stdout.read().splitlines()]
    assert code == 143, waited
    assert "result" not in [line.event for line in rest if line]
    assert not output.exists()


def test_the_loss_is_taken_on_assistant_messages_only_and_not_on_weight_0():
    tokenizer = make_tokenizer(["what colour is the sky", "the sky is blue", "answer"])
    example = chat("sky", "blue")
    example["messages"] += [
        {"role": "user", "content": "what colour is the sky"},
        {"role": "assistant", "content": "the sky is sky", "weight": 0},
    ]

    ids, labels = causal_lm.encode(tokenizer, example["messages"], 1024)

    trained = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != -100]
    assert trained == ["the", "sky", "is", "blue", "<|end|>"]
    assert len(ids) == len(labels)


def test_without_a_chat_template_it_renders_role_lines_and_learns_the_end():
    tokenizer = make_tokenizer(
        ["user: what colour is the sky", "assistant: the sky is blue"], template=False
    )

    ids, labels = causal_lm.encode(tokenizer, chat("sky", "blue")["messages"], 1024)

    assert ids[0] == tokenizer.bos_token_id
    trained = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != -100]
    assert trained == ["the", "sky", "is", "blue", "</s>"]
    assert "user" in tokenizer.decode(ids)


def test_a_chat_cut_to_max_seq_len_before_its_answer_is_left_out():
    tokenizer = make_tokenizer(["what colour is the sky", "the sky is blue", "answer"])

    assert causal_lm.build_examples(tokenizer, [chat("sky", "blue")["messages"]], 4) == []


def test_a_template_that_rewrites_earlier_turns_falls_back_to_role_lines():
    tokenizer = make_tokenizer(["user: what colour is the sky", "assistant: the sky is blue"])
    # The end marker follows the last message only: a chat's start renders differently.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}"
        "{% if not add_generation_prompt %}<|end|>{% endif %}"
    )
    messages = chat("sky", "blue")["messages"] + [{"role": "user", "content": "sky"}]

    ids, labels = causal_lm.encode(tokenizer, messages, 1024)

    assert ids[0] == tokenizer.bos_token_id
    trained = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != -100]
    assert trained == ["the", "sky", "is", "blue"]
