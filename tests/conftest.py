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
