"""Options: strict from_dict, nested dicts, Literal checks, JSON round trip."""

from __future__ import annotations

import json

import pytest

from landscape.config import ConfigError, MSAMConfig, SAMConfig, TrainConfig


def test_nested_dicts_become_dataclasses():
    cfg = TrainConfig(sam={"rho": 0.2, "mask": "norm"})
    assert cfg.sam == SAMConfig(rho=0.2, mask="norm")
    assert TrainConfig.from_dict({"msam": {"rho": 1.0}, "optimizer": "msam"}).msam == MSAMConfig(rho=1.0)


def test_unknown_keys_suggest_nearest():
    with pytest.raises(ConfigError, match=r"unknown option 'sam.rh' in SAMConfig \(did you mean 'rho'\?\)"):
        TrainConfig.from_dict({"sam": {"rh": 0.1}})
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"batchsize": 4})


def test_literal_and_ranges():
    with pytest.raises(ConfigError, match="accepted: 'sgd', 'adamw', 'msam'"):
        TrainConfig(optimizer="sgdd")
    with pytest.raises(ConfigError, match="rho must be >= 0"):
        SAMConfig(rho=-1)
    with pytest.raises(ConfigError, match="variant"):
        SAMConfig(variant="asam")
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(optimizer="msam", sam=SAMConfig())
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")


def test_json_round_trip():
    cfg = TrainConfig(sam=SAMConfig(rho=0.3, m=16), betas=(0.8, 0.9), model_kwargs={"width": 4})
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
