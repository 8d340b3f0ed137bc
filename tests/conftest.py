import itertools
import os
from pathlib import Path

import pytest

from multiconsole.agent.vms import VmManager

_counter = itertools.count()
TEST_DRIVER_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
</node>"""


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A fresh libvirt test driver per test: an empty host, no domains."""
    node = tmp_path / f"node{next(_counter)}.xml"
    node.write_text(TEST_DRIVER_XML)
    return f"test://{node}"


@pytest.fixture
def manager(test_uri: str) -> VmManager:
    m = VmManager(test_uri)
    yield m
    m.conn.close()


def artifacts_dir() -> Path:
    path = Path(os.environ.get("MULTICONSOLE_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
