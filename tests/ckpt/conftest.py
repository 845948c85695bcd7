from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.cuda import FakeCuda, build


@pytest.fixture(scope="session")
def fake_cuda_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fakecuda"))


@pytest.fixture
def fake_cuda(fake_cuda_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    state = tmp_path / "fake-cuda-state"
    state.mkdir()
    fc = FakeCuda(fake_cuda_lib, state)
    for k, v in fc.env.items():
        monkeypatch.setenv(k, v)
    yield fc
