import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from downscale.data.chunks import ChunkReader, open_array

CODECS = {
    "zstd": (ZstdCodec(level=0),),
    "lz4": (BloscCodec(cname="lz4", shuffle="shuffle"),),
    "gzip": (GzipCodec(),),
    "none": None,
}


def _array(tmp_path, compressors, **kwargs):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 37, 29)).astype(np.float32)
    arr = zarr.create_array(
        tmp_path / "g.zarr",
        name="x",
        shape=data.shape,
        chunks=(2, 8, 16),
        dtype="float32",
        compressors=compressors,
        fill_value=np.nan,
        **kwargs,
    )
    arr[:] = data
    return tmp_path / "g.zarr", data


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_windows_match_zarr(tmp_path, codec):
    store, data = _array(tmp_path, CODECS[codec])
    reader = open_array(store, "x")
    assert isinstance(reader, ChunkReader)
    keys = [
        (3, slice(5, 30), slice(2, 27)),
        (-1, slice(0, 37), slice(15, 17)),
        (slice(1, 4), 7, slice(None)),
        (0,),
        (4, slice(30, 100), slice(28, 29)),
        (2, slice(9, 9), slice(0, 3)),
    ]
    for key in keys:
        np.testing.assert_array_equal(reader[key], data[key])
    rng = np.random.default_rng(1)
    for _ in range(20):
        t = int(rng.integers(0, 5))
        r, c = int(rng.integers(0, 30)), int(rng.integers(0, 20))
        window = (t, slice(r, r + 7), slice(c, c + 9))
        np.testing.assert_array_equal(reader[window], data[window])
    with pytest.raises(IndexError):
        reader[5, 0, 0]


def test_missing_chunks_read_as_fill_value(tmp_path):
    arr = zarr.create_array(
        tmp_path / "g.zarr",
        name="x",
        shape=(2, 20, 20),
        chunks=(1, 10, 10),
        dtype="float32",
        fill_value=np.nan,
    )
    arr[0, :10, :10] = 1.0  # only one chunk written
    reader = open_array(tmp_path / "g.zarr", "x")
    window = reader[0, 5:15, 5:15]
    assert (
        (window[:5, :5] == 1).all() and np.isnan(window[5:]).all() and np.isnan(window[:, 5:]).all()
    )


def test_unsupported_layouts_fall_back_to_zarr(tmp_path):
    store, data = _array(tmp_path, CODECS["zstd"], shards=(4, 16, 16))
    arr = open_array(store, "x")
    assert not isinstance(arr, ChunkReader)
    np.testing.assert_array_equal(arr[1, 3:20, 4:9], data[1, 3:20, 4:9])
