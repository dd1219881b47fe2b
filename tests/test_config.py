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


def test_one_switch_for_sharpness_aware_optimizers_and_old_spellings():
    # today's form: optimizer is the base, the sam/msam table switches the wrapper on
    new = TrainConfig(optimizer="adamw", msam=MSAMConfig())
    assert new.sharpness_aware == "msam" and TrainConfig(sam=SAMConfig()).sharpness_aware == "sam"
    assert TrainConfig().sharpness_aware is None
    # the earlier spelling (and configs stored by earlier versions) read as the same config
    assert TrainConfig(optimizer="msam", base_optimizer="adamw") == new
    stored_old = {**TrainConfig().to_dict(), "optimizer": "msam", "base_optimizer": "adamw", "msam": None}
    assert TrainConfig.from_dict(stored_old) == new
    stored_sgd = {**TrainConfig(optimizer="adamw").to_dict(), "base_optimizer": "sgd"}  # had no effect then
    assert TrainConfig.from_dict(stored_sgd) == TrainConfig(optimizer="adamw")
    assert TrainConfig.from_dict(json.loads(new.to_json())) == new
    with pytest.raises(ConfigError, match="base_optimizer='adamw' only applies with the legacy"):
        TrainConfig(optimizer="sgd", base_optimizer="adamw")
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(sam=SAMConfig(), msam=MSAMConfig())
    # MSAM's rho default has one home
    assert TrainConfig(optimizer="msam").msam.rho == MSAMConfig().rho == 3.0


def test_new_train_fields_are_validated():
    cfg = TrainConfig(precision="bf16", channels_last=True, compile=True, save_every_steps=5,
                      diagnostics_every=2, ddp_perturbation="global", sync_bn=True)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="accepted: 'fp32', 'bf16', 'fp16'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="accepted: 'local', 'global'"):
        TrainConfig(ddp_perturbation="globl")
    for name in ("save_every_steps", "diagnostics_every", "threads"):
        with pytest.raises(ConfigError, match=f"{name} must be >= 1"):
            TrainConfig(**{name: 0})


def test_helpers_written_once(tmp_path):
    from landscape import cli_analyze, config

    assert cli_analyze.read_toml is config.read_toml
    assert config.did_you_mean("rh", ["rho", "mask"]) == " (did you mean 'rho'?)"
    assert config.did_you_mean("zzzz", ["rho"]) == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = \n")
    with pytest.raises(ConfigError, match=f"{bad}: invalid TOML"):
        config.read_toml(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        config.read_toml(tmp_path / "missing.toml")
    assert str(config.resolve_device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="accepted: auto, cpu, cuda, cuda:N"):
        config.resolve_device("gpu")


def test_errors_name_the_table_the_values_came_from():
    from landscape.analyses.hessian import HessianOptions

    with pytest.raises(ConfigError, match=r"^hessian: HessianOptions.tol='0.1' is not accepted; accepted: a number"):
        HessianOptions.from_dict({"tol": "0.1"}, where="hessian")
    with pytest.raises(ConfigError, match=r"^sam: SAMConfig.rho='big'"):
        TrainConfig.from_dict({"sam": {"rho": "big"}})
