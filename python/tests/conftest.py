"""Test setup for a dev checkout: `import moba` from python/ (not an installed copy, unless MOBA_TEST_INSTALLED=1);
the library comes from $MOBA_LIBRARY or <repo>/build/libmoba.so (moba._lib's own search order)."""
import os
import sys
import zlib

import numpy as np
import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
if os.environ.get("MOBA_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(REPO, "python"))


@pytest.fixture
def rng(request):
    # Fresh random inputs per test, reproducible: seeded by the test's id.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
