"""The package's version is the C project's."""

import os
import re

import labmq
from labmqd import REPO


def test_version_matches_cmake_project_version():
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*labmq\s+VERSION\s+([0-9.]+)", f.read())
    assert m, "no project(labmq VERSION x.y.z) in CMakeLists.txt"
    assert labmq.__version__ == m.group(1)


def test_pyproject_takes_the_version_from_the_package():
    with open(os.path.join(REPO, "python", "pyproject.toml")) as f:
        text = f.read()
    assert 'dynamic = ["version"]' in text
    assert 'version = {attr = "labmq._version.__version__"}' in text


def test_daemon_reports_the_same_version(lab):
    assert lab.ping()["version"] == labmq.__version__
