"""The fuzz mutator (tests.fuzz): every real file is a seed, 1,000 mutants carry unique canaries, the same seed
gives the same bytes, every mutation kind occurs, and a DIMSE client can send every mutant."""

from __future__ import annotations

import io
import re
import zlib
from itertools import islice
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from tests.conftest import REAL_DATA
from tests.fuzz.mutator import HIDING_CANARIES, MUTATIONS, Mutant, mutants
from tests.fuzz.seeds import MAX_SIDE, cached_seeds

COUNT = 1000
SEED = 14
#: A small bomb keeps this test cheap; the e2e test uses one past its 32 MiB bound.
BOMB_BYTES = 2 * 1024 * 1024
#: The known-bad JPEG Extended files: no decoder reads them, so they stay as they are (full size).
BAD_SEEDS = {"RG2_JPLY.dcm", "RG3_JPLY.dcm"}
NAME_PATTERN = re.compile(r"FZ[A-Z]{8}\^?[A-Z]{8}")
ID_PATTERN = re.compile(r"ZQ[A-Z0-9]{10}")
META_BYTES = 4096  # more than any mutant's preamble and file meta
DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return cached_seeds(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def batch(seeds: dict[str, bytes]) -> list[Mutant]:
    return list(mutants(seeds, SEED, COUNT, bomb_bytes=BOMB_BYTES))


def test_every_real_file_is_a_seed_re_encoded_small_in_its_own_syntax(seeds: dict[str, bytes]) -> None:
    assert set(seeds) == {path.name for path in REAL_DATA.glob("*.dcm")}
    oversized = set()
    for name, data in seeds.items():
        seed = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        original = pydicom.dcmread(REAL_DATA / name, stop_before_pixels=True)
        assert seed.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name
        if max(seed.Rows, seed.Columns) > MAX_SIDE:
            oversized.add(name)
    assert oversized == BAD_SEEDS


def test_a_thousand_mutants_of_every_seed_with_unique_canaries(batch: list[Mutant], seeds: dict[str, bytes]) -> None:
    assert len(batch) == COUNT
    assert {mutant.seed for mutant in batch} == set(seeds)
    assert len({m.patient_name for m in batch}) == len({m.patient_id for m in batch}) == COUNT
    assert all(NAME_PATTERN.fullmatch(m.patient_name) and ID_PATTERN.fullmatch(m.patient_id) for m in batch)
    assert 0 < sum("^" in m.patient_name for m in batch) < COUNT  # names with and without a "^"
    visible = [m for m in batch if not HIDING_CANARIES.intersection(m.kinds)]
    assert len(visible) > COUNT // 4
    hidden = [m.name for m in visible if m.patient_name.encode() not in m.data or m.patient_id.encode() not in m.data]
    assert not hidden, f"mutants without their canaries: {hidden[:5]}"
    assert len({m.study_uid for m in batch}) == 40


def test_the_same_seed_gives_the_same_bytes(batch: list[Mutant], seeds: dict[str, bytes]) -> None:
    again = list(islice(mutants(seeds, SEED, COUNT, bomb_bytes=BOMB_BYTES), 150))
    assert [(m.name, m.data) for m in again] == [(m.name, m.data) for m in batch[:150]]
    other = list(islice(mutants(seeds, SEED + 1, COUNT, bomb_bytes=BOMB_BYTES), 20))
    assert [m.data for m in other] != [m.data for m in batch[:20]]


def test_every_mutation_kind_occurs(batch: list[Mutant]) -> None:
    used = {kind for mutant in batch for kind in mutant.kinds}
    assert used == set(MUTATIONS), f"never used: {set(MUTATIONS) - used}"
    assert any(not mutant.kinds for mutant in batch)  # some stay clean but for their canaries
    assert max(len(mutant.kinds) for mutant in batch) == 3


def test_a_dimse_client_can_send_every_mutant(batch: list[Mutant], tmp_path: Path) -> None:
    """pynetdicom sends a file's data set as it is in the context its file meta names: every meta is whole."""
    path = tmp_path / "head.dcm"
    for mutant in batch:
        path.write_bytes(mutant.data[:META_BYTES])
        meta, offset = split_dataset(path)
        assert {"MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"} <= set(meta.dir())
        assert meta.MediaStorageSOPInstanceUID == mutant.sop_instance_uid
        assert offset < META_BYTES, mutant.name


def test_a_deflate_bomb_inflates_past_its_bound(batch: list[Mutant], tmp_path: Path) -> None:
    bombs = [mutant for mutant in batch if mutant.kinds and mutant.kinds[-1] == "deflate_bomb"]  # no damage after
    assert bombs
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bombs[0].data)
    meta, offset = split_dataset(path)
    assert meta.TransferSyntaxUID == DEFLATED
    inflated = zlib.decompressobj(-15).decompress(bombs[0].data[offset:])
    assert len(inflated) > BOMB_BYTES > 50 * len(bombs[0].data)
