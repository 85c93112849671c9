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
