"""Malformed configs to both trainers' command line (hypothesis, derandomised): `key=value` overrides (valid keys with
wrong types and ranges, unknown keys, malformed tokens, unicode, huge numbers, nan/inf, interpolations) and YAML
files (bad syntax, wrong nesting, duplicate keys, non-UTF-8). Every run either reaches training or exits with code 2
and exactly one `config error:` line, never a traceback. Training itself is replaced by a stub: this is the
command line and the config loader, in-process."""
import contextlib
import dataclasses
import io
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_vlm.training import cli
from spark_vlm.training.stage1_config import Stage1Config
from spark_vlm.training.stage2_config import Stage2Config


def dotted_keys(cls, prefix: str = "") -> list[str]:
    """Every key of a config class, sections included (`train`, `train.batch_size`, ...)."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, f"{prefix}{name}.")
    return keys


STAGES = {"stage1": Stage1Config, "stage2": Stage2Config}
KEYS = {name: dotted_keys(cls) for name, cls in STAGES.items()}
NUMBERS = st.integers(-3, 70) | st.integers(-2**70, 2**70) | st.floats()  # floats() draws nan and inf too
VALUES = st.one_of(
    NUMBERS.map(str), st.booleans().map(str).map(str.lower), st.text(max_size=6),
    st.sampled_from(["null", "nan", "-inf", ".inf", "1e999", "[0.9]", "[0.9, 0.99]", "[", "{a: 1}", "{", "${x}",
                     "${train.batch_size}", "fp16", "bf16", "clip", "scenes", "coco", "oracle", "'", '"', "é",
                     "\x00"]))


def overrides(stage: str):
    key = st.sampled_from(KEYS[stage]) | st.text(min_size=1, max_size=8)
    token = st.builds(lambda k, v: f"{k}={v}", key, VALUES) | st.text(max_size=8)
    # argparse owns tokens that start with '-' (its usage message); the config loader owns the rest
    return st.lists(token.filter(lambda t: not t.startswith("-")), max_size=3)


def yaml_docs(stage: str):
    """File bytes: a nested mapping of real and made-up keys dumped as YAML, or text/bytes that are not that."""
    leaf = NUMBERS | st.booleans() | st.none() | st.text(max_size=5) | st.lists(NUMBERS, max_size=3)
    section = st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS[stage]]) | st.text(max_size=4),
                              leaf, max_size=3)
    doc = st.dictionaries(st.sampled_from([k for k in KEYS[stage] if "." not in k]) | st.text(max_size=4),
                          section | leaf, max_size=3)
    return st.one_of(doc.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
                     st.text(max_size=20).map(str.encode), st.binary(max_size=12),
                     st.sampled_from([b"train: {batch_size: 8", b"train:\n  batch_size: 8\n  batch_size: 9\n",
                                      b"train:\n- 1\n- 2\n", b"[1, 2]\n", b"train: \xff\xfe\n", b"\t- a: b\n",
                                      b"train: &a {batch_size: *a}\n", b"loss: !!python/object:os.system ls\n"]))


FUZZ = settings(max_examples=40, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def trains_or_one_config_error(monkeypatch, stage: str, argv: list[str]) -> int:
    reached = []
    monkeypatch.setattr(cli, "train", lambda cfg, build, resume=None: reached.append(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(STAGES[stage], build_stage=None, doc="fuzz", argv=argv)
    lines = err.getvalue().splitlines()
    if code == 0:
        assert len(reached) == 1 and isinstance(reached[0], STAGES[stage]) and not lines, err.getvalue()
    else:
        assert code == 2 and not reached, err.getvalue()
        assert len(lines) == 1 and lines[0].startswith("config error: ") and len(lines[0]) < 400, err.getvalue()
    return code


@FUZZ
@given(stage=st.sampled_from(list(STAGES)), data=st.data())
def test_overrides(monkeypatch, stage, data):
    trains_or_one_config_error(monkeypatch, stage, ["train.output_dir=unused", *data.draw(overrides(stage))])


@FUZZ
@given(stage=st.sampled_from(list(STAGES)), data=st.data())
def test_yaml_files(monkeypatch, tmp_path, stage, data):
    path = tmp_path / "experiment.yaml"
    path.write_bytes(data.draw(yaml_docs(stage)))
    trains_or_one_config_error(monkeypatch, stage, ["--config", str(path), *data.draw(overrides(stage))])


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_fuzz_oracle_sees_both_outcomes(monkeypatch, tmp_path, stage):
    """The oracle accepts success or one error line: check that each really happens where it should."""
    (tmp_path / "ok.yaml").write_text("train:\n  batch_size: 4\n  precision: fp32\n")
    assert trains_or_one_config_error(monkeypatch, stage, ["--config", str(tmp_path / "ok.yaml"), "optim.lr=0.01"]) == 0
    assert trains_or_one_config_error(monkeypatch, stage, ["train.batch_size=0"]) == 2


@pytest.mark.parametrize("override, line", [
    ("loss={", "config error: cannot parse the override 'loss={' (while parsing a flow node"),
    ("loss=\x1f", "config error: cannot parse the override 'loss=\\x1f' (unacceptable character #x001f"),
    ("loss=${0}", "config error: loss: Interpolation key '0' not found"),
    ("a\nb=1", "config error: 'a\\nb': unknown key"),
])
def test_what_the_fuzz_found(capsys, override, line):
    """Each of these was a traceback (or a line broken in two) before."""
    assert cli.run_cli(Stage1Config, None, "fuzz", [override]) == 2
    assert capsys.readouterr().err.startswith(line)


def test_a_yaml_scalar_is_one_line(tmp_path, capsys):
    (tmp_path / "zero.yaml").write_text("0\n")
    assert cli.run_cli(Stage1Config, None, "fuzz", ["--config", str(tmp_path / "zero.yaml")]) == 2
    assert capsys.readouterr().err == (f"config error: {tmp_path / 'zero.yaml'}: cannot read it as a config (Invalid "
                                       f"loaded object type: int)\n")
