"""norm_params against numpy brute force on a model with every normalization type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape.analyses.norm_params import NormParamsOptions, norm_layers, norm_params
from landscape.config import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.gn = nn.GroupNorm(2, 6)
        self.ln_nobias = nn.LayerNorm(6, bias=False)
        self.ln_noaffine = nn.LayerNorm(6, elementwise_affine=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x)
        h = self.ln_noaffine(self.ln_nobias(self.gn(self.ln(self.bn(h)))))
        return self.head(h)


@pytest.fixture
def net():
    g = torch.Generator().manual_seed(0)
    m = Net()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    m.train()
    return m


def test_layers_found_by_type(net):
    assert list(norm_layers(net)) == ["bn", "ln", "gn", "ln_nobias"]


def test_statistics_match_numpy(net):
    q = (0.0, 0.1, 0.5, 0.9, 1.0)
    ds = norm_params(net, bins=5, quantiles=q)
    assert list(ds["layer"].values) == ["bn", "ln", "gn", "ln_nobias"]
    assert list(ds["layer_type"].values) == ["BatchNorm1d", "LayerNorm", "GroupNorm", "LayerNorm"]
    for layer in ["bn", "ln", "gn", "ln_nobias"]:
        mod = getattr(net, layer)
        for param, attr in (("gamma", "weight"), ("beta", "bias")):
            sel = {"layer": layer, "param": param}
            t = getattr(mod, attr)
            if t is None:
                assert np.isnan(ds["mean"].sel(sel)) and np.isnan(ds["quantile_value"].sel(sel)).all()
                assert int(ds["histogram"].sel(sel).sum()) == 0
                continue
            v = t.detach().double().numpy()
            assert float(ds["mean"].sel(sel)) == pytest.approx(v.mean(), rel=1e-12)
            assert float(ds["std"].sel(sel)) == pytest.approx(v.std(ddof=0), rel=1e-12)
            assert float(ds["abs_mean"].sel(sel)) == pytest.approx(np.abs(v).mean(), rel=1e-12)
            np.testing.assert_allclose(ds["quantile_value"].sel(sel), np.quantile(v, q), rtol=1e-12)
            counts, edges = np.histogram(v, bins=5)
            np.testing.assert_array_equal(ds["histogram"].sel(sel), counts)
            np.testing.assert_allclose(ds["bin_edges"].sel(sel), edges, rtol=1e-12)
        assert int(ds["size"].sel(layer=layer)) == 6


def test_fixed_range_shares_bins_and_drops_outside(net):
    ds = norm_params(net, bins=4, gamma_range=(-1.0, 1.0), beta_range=(0.0, 2.0))
    np.testing.assert_allclose(ds["bin_edges"].sel(layer="bn", param="gamma"), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(ds["bin_edges"].sel(layer="ln", param="beta"), [0, 0.5, 1, 1.5, 2])
    v = net.bn.weight.detach().double().numpy()
    expect = ((v >= -1) & (v <= 1)).sum()
    assert int(ds["histogram"].sel(layer="bn", param="gamma").sum()) == expect


def test_default_batchnorm_init_is_ones_and_zeros():
    m = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    ds = norm_params(m)
    assert float(ds["mean"].sel(layer="1", param="gamma")) == 1.0
    assert float(ds["std"].sel(layer="1", param="gamma")) == 0.0
    assert float(ds["mean"].sel(layer="1", param="beta")) == 0.0
    # All five equal values fall into one bin (numpy's degenerate range rule).
    assert int(ds["histogram"].sel(layer="1", param="gamma").max()) == 5


def test_model_not_mutated(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norm_params(net)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_every_variable_documented(net):
    ds = norm_params(net)
    for name in list(ds.data_vars) + list(ds.coords):
        assert {"long_name", "units"} <= set(ds[name].attrs), name
    assert set(ds.dims) == {"layer", "param", "quantile", "bin", "bin_edge"}
    assert '"bins": 20' in ds.attrs["config_json"]


def test_no_norm_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no normalization layer"):
        norm_params(nn.Sequential(nn.Linear(2, 2)))


def test_options_validated():
    with pytest.raises(ConfigError, match="bins"):
        NormParamsOptions(bins=0)
    with pytest.raises(ConfigError, match="gamma_range"):
        NormParamsOptions(gamma_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="quantiles"):
        NormParamsOptions(quantiles=(0.5, 1.5))
    with pytest.raises(ConfigError, match="did you mean 'bins'"):
        NormParamsOptions.from_dict({"bin": 3})
    assert NormParamsOptions.from_dict({"gamma_range": [0, 2]}).gamma_range == (0, 2)
