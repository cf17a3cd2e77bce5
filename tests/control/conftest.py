"""The control-plane tests share the limits tests' fixtures and async runner."""

from tests.limits.conftest import *  # noqa: F403
from tests.limits.conftest import pytest_pyfunc_call  # noqa: F401
