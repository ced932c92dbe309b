"""Each backend's command line, readiness path and served name; secrets masked for display."""

import sys

import pytest
from django.core.exceptions import ValidationError

from ai.instances.backends import (
    CommandError,
    command_line,
    display_command,
    masked_environment,
    readiness_path,
    served_model_id,
)
from ai.models import Instance


def instance(**fields) -> Instance:
    fields.setdefault("name", "smol")
    return Instance(**fields)


def test_it_runs_llama_server_with_the_model_address_and_options():
    smol = instance(
        backend="llama_cpp",
        model_path="/m/smol.gguf",
        context_size=2048,
        gpu_layers=0,
        threads=2,
        parallel=4,
        extra_args=["--jinja"],
    )
    assert command_line(smol, host="127.0.0.1", port=8201) == [
        "llama-server", "-m", "/m/smol.gguf", "--host", "127.0.0.1", "--port", "8201",
        "-c", "2048", "-ngl", "0", "-t", "2", "-np", "4", "--jinja",
    ]  # fmt: skip
    assert readiness_path(smol) == "/health"
    assert served_model_id(smol) == "smol"


def test_it_runs_vllm_serve_under_the_instance_name():
    big = instance(name="big", backend="vllm", model_path="org/model", context_size=4096)
    assert command_line(big, host="0.0.0.0", port=8300) == [
        "vllm", "serve", "org/model", "--host", "0.0.0.0", "--port", "8300",
        "--served-model-name", "big", "--max-model-len", "4096",
    ]  # fmt: skip
    assert served_model_id(big) == "big"


def test_it_runs_mlx_and_sends_it_the_model_it_loads():
    mlx = instance(backend="mlx", model_path="mlx-community/m")
    assert command_line(mlx, host="h", port=1) == [
        "mlx_lm.server", "--model", "mlx-community/m", "--host", "h", "--port", "1",
    ]  # fmt: skip
    assert readiness_path(mlx) == "/v1/models"
    assert served_model_id(mlx) == "mlx-community/m"


def test_it_fills_a_command_template_and_an_override_replaces_only_the_executable():
    command = instance(backend="command", command_override="{python} -m srv --port {port}")
    assert command_line(command, host="h", port=9) == [sys.executable, "-m", "srv", "--port", "9"]
    override = instance(backend="llama_cpp", model_path="m", command_override="/opt/llama-server")
    assert command_line(override, host="h", port=9)[:3] == ["/opt/llama-server", "-m", "m"]


def test_it_explains_a_command_it_cannot_parse():
    broken = instance(backend="command", command_override="srv --port '{port}")
    with pytest.raises(CommandError) as caught:
        command_line(broken, host="h", port=1)
    assert str(caught.value) == "The command cannot be parsed: No closing quotation."


def test_it_names_the_placeholders_a_command_may_use():
    typo = instance(backend="command", command_override="srv --port {prot}")
    with pytest.raises(CommandError, match=r"unknown placeholder 'prot'; use \{host\}"):
        command_line(typo, host="h", port=1)


def test_it_masks_secret_flags_and_variables_for_display():
    smol = instance(
        backend="llama_cpp",
        model_path="m",
        extra_args=["--api-key", "sk-123", "--hf-token=hf-456", "--threads", "2"],
    )
    shown = display_command(smol, host="h", port=None)
    assert "sk-123" not in shown and "hf-456" not in shown
    assert "--port '{port}'" in shown and "--threads 2" in shown
    assert masked_environment({"HF_TOKEN": "x", "OMP_NUM_THREADS": "2"}) == {
        "HF_TOKEN": "********",
        "OMP_NUM_THREADS": "2",
    }


@pytest.mark.parametrize("name", ["Smol", "-smol", "smol-", "smol\n", "a" * 64, "smol_2", ""])
def test_it_refuses_a_name_that_is_not_a_dns_label(name):
    bad = instance(name=name, backend="command", command_override="srv")
    with pytest.raises(ValidationError) as caught:
        bad.full_clean(exclude=["organisation"])
    assert "name" in caught.value.message_dict


@pytest.mark.parametrize(
    ("backend", "extra_args", "served"),
    [
        ("vllm", ["--enable-lora", "--lora-modules", "acme:ft=/data/a"], "acme:ft"),
        ("vllm", ["--enable-lora", "--lora-modules=acme:ft=/data/a"], "acme:ft"),
        # Several adapters: the caller names one; the instance's name is the base.
        ("vllm", ["--lora-modules", "a=/x", "--lora-modules", "b=/y"], "srv"),
        ("vllm", ["--enable-lora"], "srv"),
        ("llama_cpp", ["--lora-modules", "a=/x"], "srv"),
    ],
)
def test_a_vllm_server_of_one_adapter_is_asked_for_the_adapter(backend, extra_args, served):
    instance = Instance(name="srv", backend=backend, model_path="/m", extra_args=extra_args)

    assert served_model_id(instance) == served
