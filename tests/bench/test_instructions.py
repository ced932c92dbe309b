"""The instruction-count bench's own logic: its arguments and the callgrind dumps it reads."""

import pytest

from tests.bench.instructions import dump_totals, fake_upstream_module, parse_args

DUMP = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
cmd: python -m uvicorn panel.asgi:application
part: 1
thread: 1
events: Ir
fn=(1) PyEval_EvalFrameDefault
0 120
summary: 401234567
totals: 401234567
"""


def test_it_reads_the_instructions_a_dump_counted():
    assert dump_totals(DUMP) == 401234567


def test_it_reads_the_totals_line_when_a_dump_has_no_summary():
    assert dump_totals(DUMP.replace("summary: 401234567\n", "")) == 401234567


def test_it_refuses_a_dump_without_counts():
    with pytest.raises(ValueError, match="no summary or totals"):
        dump_totals("events: Ir\nfn=(1) main\n0 5\n")


def test_it_measures_json_and_sse_two_hundred_times_by_default():
    args = parse_args([])
    assert (args.requests, args.modes, args.redis) == (200, ["json", "sse"], "")


def test_it_takes_the_modes_as_a_comma_separated_list():
    assert parse_args(["--modes", "sse", "--requests", "50"]).modes == ["sse"]


@pytest.mark.parametrize("argv", [["--modes", "xml"], ["--modes", ""], ["--requests", "0"]])
def test_it_refuses_arguments_it_cannot_measure(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_it_starts_the_fake_upstream_from_where_the_tree_keeps_it(tmp_path):
    assert fake_upstream_module(tmp_path) == "ai.fake_upstream"
    (tmp_path / "fakeupstream").mkdir()
    assert fake_upstream_module(tmp_path) == "fakeupstream"
