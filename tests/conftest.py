import pathlib
import sys

import pytest

# The slow references live beside the tests.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir():
    """../shared beside the checkout (CI has it; a user's clone may not)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the checkout")
    return SHARED
