import numpy as np
import pytest
import torch
import xarray as xr

from downscale.data.scaling import (
    IdentityScaler,
    LogScaler,
    MinMaxScaler,
    SqrtScaler,
    ZScaler,
    scaler_from_state,
)
from downscale.utils.errors import UserError

rng = np.random.default_rng(0)
PRECIP = xr.DataArray(rng.gamma(0.5, 8.0, size=(50, 8, 8)).astype(np.float32), name="precip")
TEMP = xr.DataArray(rng.normal(280.0, 6.0, size=(50, 8, 8)), name="tas")


@pytest.mark.parametrize(
    ("scaler", "data"),
    [
        (ZScaler(), TEMP),
        (ZScaler(with_mean=False), TEMP),
        (ZScaler(threshold=1.0), PRECIP),
        (MinMaxScaler(), TEMP),
        (LogScaler(), PRECIP),
        (SqrtScaler(), PRECIP),
        (IdentityScaler(), TEMP),
    ],
)
def test_inverse_of_forward_is_identity_on_numpy_torch_and_xarray(scaler, data):
    scaler.fit(data)
    x = data.values.astype(np.float64)
    np.testing.assert_allclose(scaler.inverse(scaler.forward(x)), x, rtol=1e-9, atol=1e-9)
    t = torch.from_numpy(x)
    torch.testing.assert_close(scaler.inverse(scaler.forward(t)), t, rtol=1e-9, atol=1e-9)
    xr.testing.assert_allclose(
        scaler.inverse(scaler.forward(data.astype(np.float64))), data.astype(np.float64)
    )


def test_z_scaler_uses_five_standard_deviations_and_the_training_values():
    s = ZScaler().fit(TEMP)
    assert s.mean == pytest.approx(float(TEMP.mean()))
    assert s.std == pytest.approx(float(TEMP.std()))
    assert s.forward(s.mean + 5 * s.std) == pytest.approx(1.0)
    assert ZScaler(with_mean=False).fit(TEMP).forward(0.0) == 0.0


def test_threshold_z_scaler_fits_on_values_above_the_threshold_only():
    s = ZScaler(threshold=1.0).fit(PRECIP)
    above = PRECIP.values[PRECIP.values > 1.0]
    assert s.mean == pytest.approx(above.mean(), rel=1e-5)


def test_min_max_maps_training_range_to_minus_one_one():
    s = MinMaxScaler().fit(TEMP)
    assert s.forward(float(TEMP.min())) == pytest.approx(-1.0)
    assert s.forward(float(TEMP.max())) == pytest.approx(1.0)


def test_log_and_sqrt_match_the_reference_formulas():
    assert LogScaler().forward(np.array(99.0)) == pytest.approx(1.0)  # log10(100) / 2
    assert LogScaler().inverse(np.array(1.0)) == pytest.approx(99.0)
    assert SqrtScaler().forward(np.array(225.0)) == pytest.approx(1.0)  # sqrt(225) / 15


def test_state_round_trip_is_plain_python():
    s = ZScaler(threshold=0.5).fit(PRECIP)
    state = s.state_dict()
    assert all(isinstance(v, str | float | bool | int | type(None)) for v in state.values())
    again = scaler_from_state(state)
    assert again.forward(3.0) == pytest.approx(s.forward(3.0))


def test_fitting_a_constant_is_a_user_error():
    with pytest.raises(UserError, match="constant"):
        MinMaxScaler().fit(xr.DataArray(np.ones(10), name="c"))
    with pytest.raises(UserError, match="unknown scaler"):
        scaler_from_state({"class": "os.system"})


def test_log_scaler_inverse_never_returns_negative_rain():
    """Generated fields undershoot 0 in scaled space; the inverse must map them to 0 mm, not -1."""
    y = np.array([-0.5, -1e-3, 0.0, 0.5])
    np.testing.assert_allclose(LogScaler().inverse(y), [0.0, 0.0, 0.0, 9.0])
    t = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        LogScaler().inverse(t), torch.tensor([0.0, 9.0], dtype=torch.float64)
    )
