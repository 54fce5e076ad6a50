"""Shared pytest fixtures: fresh random seeds that are printed, so a failure can be replayed.

Every random test takes the ``seed`` fixture. By default it is fresh for each run; set
``VARACCEL_SEED=<n>`` to replay a failure. Seeds that once failed are pinned in the tests
themselves with ``@pytest.mark.parametrize("seed", [...], indirect=True)``.
"""

import os
import secrets

import pytest


@pytest.fixture
def seed(request):
    pinned = getattr(request, "param", None)
    if pinned is not None:
        value = int(pinned)
    elif os.environ.get("VARACCEL_SEED"):
        value = int(os.environ["VARACCEL_SEED"])
    else:
        value = secrets.randbits(31)
    # Shown in the report of a failing test (-ra) and in captured output.
    print(f"seed={value} (replay with VARACCEL_SEED={value})")
    request.node.user_properties.append(("seed", value))
    return value


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only shard K of N (1-based): tests are dealt by a stable hash of their id")


def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if not shard:
        return
    try:
        k, n = (int(x) for x in shard.split("/"))
        assert 1 <= k <= n
    except (ValueError, AssertionError):
        raise pytest.UsageError(f"--shard must be K/N with 1 <= K <= N, not {shard!r}") from None
    import zlib
    keep, drop = [], []
    for item in items:
        (keep if zlib.crc32(item.nodeid.encode()) % n == k - 1 else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
