import os

# Nothing may be fetched from a hub at run time; without these a failed hub lookup costs ~48 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def explorer_runs(tmp_path_factory):
    """The explorer's tiny run pairs (test_explorer.build_runs), built once for its HTTP and browser tests."""
    from test_explorer import build_runs

    return build_runs(tmp_path_factory.mktemp("explorer_runs"))


def _trainer_here(config_cls, build_stage, tmp_path, monkeypatch, capsys):
    from inprocess import run_in_process

    return lambda args, cache=None: run_in_process(config_cls, build_stage, args, cache or tmp_path / "cache",
                                                   monkeypatch, capsys)


@pytest.fixture
def stage1_here(tmp_path, monkeypatch, capsys):
    """`python stage1_pretrain/train.py *args` with SPARK_VLM_CACHE=cache (default tmp_path/cache), run in this
    process (inprocess.run_in_process): exit code, stdout and stderr."""
    from spark_vlm.training.stage1 import build_stage1
    from spark_vlm.training.stage1_config import Stage1Config

    return _trainer_here(Stage1Config, build_stage1, tmp_path, monkeypatch, capsys)


@pytest.fixture
def stage2_here(tmp_path, monkeypatch, capsys):
    """`python stage2_vlm/train.py *args`, as stage1_here."""
    from spark_vlm.training.stage2 import build_stage2
    from spark_vlm.training.stage2_config import Stage2Config

    return _trainer_here(Stage2Config, build_stage2, tmp_path, monkeypatch, capsys)
