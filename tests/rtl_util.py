"""Glue between pytest and the cocotb testbenches: one pytest case per (core, parameter set)."""

import json

import pytest

from sim.runner import run_cocotb


def run_tb(core, params, module, seed, testcase=None):
    """Run cocotb ``module`` on ``core`` built with ``params``; the stimulus seed is ``seed``."""
    env = {"VARACCEL_PARAMS": json.dumps(params, sort_keys=True), "VARACCEL_SEED": str(seed)}
    run_cocotb(core, params, module, testcase=testcase, extra_env=env)


rtl = pytest.mark.rtl
