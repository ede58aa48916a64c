"""Shared test set-up. pytest puts this folder on sys.path (rootdir conftest), so tests import
`pipeline_helpers` (tiny configs, the stage runner) and `lm_fixtures` (tiny offline models)."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny matmuls (thread hand-off costs more than the
    work); a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
