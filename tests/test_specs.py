"""Model and data specs: import paths (search paths, PYTHONPATH), factories, zoo names, budget, JSON."""

from __future__ import annotations

import functools
import multiprocessing as mp
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from landscape.models import build_model, register_model
from landscape.specs import (
    ModelSpec,
    SpecError,
    build_model_from_spec,
    default_search_paths,
    import_object,
    import_path_of,
    is_import_path,
    resolve_data,
    resolve_model,
    spec_to_json,
)

USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyCNN(nn.Module):
    def __init__(self, channels=2, num_classes=3):
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * 8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def make_cnn(channels=2, num_classes=3):
    return TinyCNN(channels, num_classes)


class Zoo:
    @staticmethod
    def small(num_classes=3):
        return TinyCNN(1, num_classes)


def make_data(split="train", n=6):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return TensorDataset(torch.randn(n, 1, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def make_data_no_split(n=4):
    return TensorDataset(torch.zeros(n, 1, 8), torch.zeros(n, dtype=torch.long))


def broken(**kwargs):
    raise RuntimeError("weights server unreachable")


def not_a_model(**kwargs):
    return {"weights": 1}


DATA = TensorDataset(torch.ones(2, 1, 8), torch.zeros(2, dtype=torch.long))
NUMBER = 3
'''


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def user_module(tmp_path, request):
    """A user module ``<unique name>.py`` in a folder that is not on sys.path."""
    name = "mynets_" + request.node.name.replace("[", "_").replace("]", "_").replace("-", "_")
    folder = _write(tmp_path / "scripts", name, USER_MODULE)
    yield name, folder
    sys.modules.pop(name, None)


# ------------------------------------------------------------------------------- import_object


def test_import_object_finds_module_through_search_paths(user_module):
    name, folder = user_module
    with pytest.raises(SpecError, match="no module named"):
        import_object(f"{name}:make_cnn")
    fn = import_object(f"{name}:make_cnn", search_paths=[folder])
    assert isinstance(fn(), nn.Module)
    # a dotted attribute, and the folder stays importable afterwards (the module's own imports)
    assert import_object(f"{name}:Zoo.small")().conv.out_channels == 1


def test_import_object_finds_module_on_pythonpath(tmp_path, monkeypatch):
    folder = _write(tmp_path / "pp", "pp_only_module", "VALUE = 42\n")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    try:
        assert import_object("pp_only_module:VALUE") == 42
    finally:
        sys.modules.pop("pp_only_module", None)


@pytest.mark.parametrize("bad", ["mynets", "mynets:", ":make", "my nets:make", "a:b:c", "mynets.make_cnn", 3, None])
def test_import_object_rejects_malformed_paths(bad):
    with pytest.raises(SpecError, match="is not an import path; expected 'package.module:attribute'"):
        import_object(bad)
    assert not is_import_path(bad)


def test_import_object_missing_module_names_path_and_folders(tmp_path):
    with pytest.raises(SpecError) as e:
        import_object("no_such_module_xyz.sub:make", search_paths=[tmp_path])
    msg = str(e.value)
    assert "'no_such_module_xyz.sub:make'" in msg and "no module named 'no_such_module_xyz'" in msg
    assert str(tmp_path) in msg


def test_import_object_missing_attribute_lists_names(user_module):
    name, folder = user_module
    with pytest.raises(SpecError) as e:
        import_object(f"{name}:make_cnm", search_paths=[folder])
    msg = str(e.value)
    assert "has no attribute 'make_cnm'" in msg and "did you mean 'make_cnn'" in msg
    assert f"{name}.py" in msg and "make_data" in msg
    with pytest.raises(SpecError, match="object 'mynets_.*Zoo' has no attribute 'big'"):
        import_object(f"{name}:Zoo.big", search_paths=[folder])


def test_import_object_module_that_fails_to_import(tmp_path):
    _write(tmp_path, "raises_at_import", "raise RuntimeError('boom at import')\n")
    _write(tmp_path, "needs_missing_dep", "import a_dependency_that_is_not_installed\n")
    with pytest.raises(SpecError, match="importing module 'raises_at_import' raised RuntimeError: boom at import"):
        import_object("raises_at_import:x", search_paths=[tmp_path])
    # the module exists; its own import fails: not reported as "no module named needs_missing_dep"
    with pytest.raises(SpecError, match="importing module 'needs_missing_dep' failed: .*a_dependency_that_is_not_installed"):
        import_object("needs_missing_dep:x", search_paths=[tmp_path])


# -------------------------------------------------------------------------------------- models


def test_resolve_model_forms_build_equal_models(user_module):
    name, folder = user_module
    make = import_object(f"{name}:make_cnn", search_paths=[folder])
    cls = import_object(f"{name}:TinyCNN")
    specs = [
        make,
        cls,
        f"{name}:make_cnn",
        {"name": f"{name}:make_cnn", "kwargs": {"channels": 5}},
        resolve_model(make, {"channels": 1}),
    ]
    for spec in specs:
        ms = resolve_model(spec, {"channels": 4, "num_classes": 2}, search_paths=[folder])
        assert isinstance(ms, ModelSpec) and ms.kwargs["channels"] == 4
        torch.manual_seed(0)
        m = ms()
        assert (m.conv.out_channels, m.head.out_features) == (4, 2)
        assert m.landscape_spec["kwargs"] == {"channels": 4, "num_classes": 2}


def test_resolve_model_zoo_name_and_dict_with_kwargs_merged():
    kw = {"input_shape": [6], "num_classes": 2}
    a = resolve_model({"name": "mlp", "kwargs": {"width": 3, "depth": 1}}, {"width": 5, **kw})
    assert a.kwargs == {"width": 5, "depth": 1, **kw} and a.factory is None
    torch.manual_seed(0)
    m = a()
    torch.manual_seed(0)
    ref = build_model("mlp", width=5, depth=1, **kw)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    assert m.landscape_spec == {"name": "mlp", "kwargs": {"width": 5, "depth": 1, **kw}}


def test_resolve_model_errors_name_the_spec():
    with pytest.raises(SpecError, match=r"unknown model 'resnet18_cifra' \(did you mean 'resnet18_cifar'\?\); zoo models: .*mlp.*import path"):
        resolve_model("resnet18_cifra")
    with pytest.raises(SpecError, match="nn.Module instance .*Linear.*pass its class or a factory"):
        resolve_model(nn.Linear(2, 2))
    with pytest.raises(SpecError, match="names a int, not a model class or factory"):
        resolve_model("landscape.models.registry:MAX_PARAMETERS")
    with pytest.raises(SpecError, match=r"unknown key\(s\) 'kwarg'"):
        resolve_model({"name": "mlp", "kwarg": {}})
    with pytest.raises(SpecError, match="'kwargs' must be a dict"):
        resolve_model({"name": "mlp", "kwargs": [1]})
    with pytest.raises(SpecError, match="model spec of type int"):
        resolve_model(3)
    with pytest.raises(SpecError, match="model 'mlp' has no option 'widht' \\(did you mean 'width'\\?\\)"):
        build_model_from_spec("mlp", {"widht": 3})


def test_factory_that_raises_or_returns_no_module(user_module):
    name, folder = user_module
    with pytest.raises(SpecError) as e:
        build_model_from_spec(f"{name}:broken", {"depth": 3}, search_paths=[folder])
    assert f"model factory '{name}:broken'" in str(e.value)
    assert "RuntimeError: weights server unreachable" in str(e.value)
    with pytest.raises(SpecError, match=f"model factory '{name}:not_a_model' returned a dict, not an nn.Module"):
        build_model_from_spec(f"{name}:not_a_model", search_paths=[folder])
    with pytest.raises(SpecError, match="TypeError"):
        build_model_from_spec(f"{name}:make_cnn", {"colour": 1}, search_paths=[folder])


def test_parameter_budget_refuses_before_allocating():
    # 10**10 parameters (40 GB): refused from the meta-device count, instantly, never allocated
    t = time.perf_counter()
    with pytest.raises(SpecError) as e:
        build_model_from_spec(nn.Linear, {"in_features": 10**5, "out_features": 10**5})
    assert time.perf_counter() - t < 1.0
    msg = str(e.value)
    assert "torch.nn.modules.linear:Linear" in msg and "max_parameters=2,000,000,000" in msg
    assert "10,000,000,000" in msg and "no weights were allocated" in msg
    # zoo specs and a custom budget (the count where the builder was stopped is named)
    with pytest.raises(SpecError, match=r"model spec \{'name': 'mlp', 'kwargs': \{'width': 10000000\}\}: more than max_parameters"):
        build_model_from_spec("mlp", {"width": 10**7})
    with pytest.raises(SpecError, match=r"more than max_parameters=1,000 parameters \(counted 1,280 before stopping"):
        build_model_from_spec(lambda: build_model("mlp", width=32, num_classes=10), max_parameters=1000)
    assert build_model_from_spec("mlp", {"width": 32}, max_parameters=2698) is not None


def test_parameter_tensor_budget_stops_deep_specs_fast():
    t = time.perf_counter()
    with pytest.raises(SpecError, match=r"'depth': 10000000.*more than max_parameter_tensors=200 parameter tensors"):
        build_model_from_spec("mlp", {"depth": 10**7}, max_parameter_tensors=200)
    assert time.perf_counter() - t < 2.0


def test_factory_that_cannot_run_on_meta_is_still_counted():
    def needs_real_tensors():
        width = int(torch.tensor(2).item())  # .item() of a meta tensor fails: built for real
        return nn.Linear(3, width)

    assert isinstance(build_model_from_spec(needs_real_tensors), nn.Linear)
    with pytest.raises(SpecError, match="more than max_parameters=5 parameters .*while building it"):
        build_model_from_spec(needs_real_tensors, max_parameters=5)


def test_register_model_decorator_and_call():
    @register_model("test_specs_tiny")
    def tiny(width=2):
        return nn.Linear(1, width)

    register_model("test_specs_tiny2", lambda: nn.Linear(1, 1))
    assert build_model_from_spec("test_specs_tiny", {"width": 3}).out_features == 3
    assert isinstance(build_model("test_specs_tiny2"), nn.Linear)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("test_specs_tiny", tiny)
    with pytest.raises(ValueError, match="without ':'"):
        register_model("a:b", tiny)


# ---------------------------------------------------------------------------------------- data


def test_resolve_data_forms(user_module):
    name, folder = user_module
    ds = TensorDataset(torch.zeros(3, 2), torch.zeros(3))
    assert resolve_data(ds) is ds
    xy = (torch.zeros(2, 2), torch.zeros(2))
    assert resolve_data(xy, "test") is xy
    # factory with split (called with split=) and without it; kwargs merged
    train = resolve_data(f"{name}:make_data", "train", {"n": 5}, search_paths=[folder])
    test = resolve_data({"name": f"{name}:make_data", "kwargs": {"n": 5}}, "test", search_paths=[folder])
    assert len(train) == len(test) == 5 and not torch.equal(train.tensors[0], test.tensors[0])
    make = import_object(f"{name}:make_data")
    torch.testing.assert_close(resolve_data(make, "test", {"n": 5}).tensors[0], test.tensors[0], rtol=0, atol=0)
    assert len(resolve_data(f"{name}:make_data_no_split", "test", {"n": 2})) == 2
    # an import path naming a data object; a zoo data set
    assert resolve_data(f"{name}:DATA") is import_object(f"{name}:DATA")
    assert len(resolve_data("synthetic", "test", {"num_samples": 4, "input_shape": [2]})) == 4
    assert resolve_data(functools.partial(make, n=3), "train").tensors[0].shape[0] == 3


def test_resolve_data_errors(user_module):
    name, folder = user_module
    with pytest.raises(SpecError, match=r"unknown dataset 'mnist1' \(did you mean 'mnist1d'\?\); zoo data sets: .*import path"):
        resolve_data("mnist1")
    with pytest.raises(SpecError, match=f"data factory '{name}:broken' .*raised RuntimeError: weights server unreachable"):
        resolve_data(f"{name}:broken", search_paths=[folder])
    with pytest.raises(SpecError, match="data factory .*returned None"):
        resolve_data(lambda split: None)
    with pytest.raises(SpecError, match="data kwargs .* given for a TensorDataset object"):
        resolve_data(TensorDataset(torch.zeros(1)), kwargs={"n": 1})
    with pytest.raises(SpecError, match="names a TensorDataset object, which takes no kwargs"):
        resolve_data(f"{name}:DATA", kwargs={"n": 1})
    with pytest.raises(SpecError, match="no data given"):
        resolve_data(None)
    with pytest.raises(SpecError, match="dataset 'synthetic' has no option 'nsamples'"):
        resolve_data("synthetic", kwargs={"nsamples": 3})
    with pytest.raises(SpecError, match="no module named"):
        resolve_data("nowhere_to_be_found:make")


# ---------------------------------------------------------------------------------------- JSON


def test_spec_to_json_round_trip(user_module):
    name, folder = user_module
    make = import_object(f"{name}:make_cnn", search_paths=[folder])
    assert spec_to_json(make, {"channels": 3}) == {"name": f"{name}:make_cnn", "kwargs": {"channels": 3}}
    assert spec_to_json(import_object(f"{name}:Zoo.small")) == {"name": f"{name}:Zoo.small", "kwargs": {}}
    assert spec_to_json({"name": "mlp", "kwargs": {"input_shape": (4,)}}) == {"name": "mlp", "kwargs": {"input_shape": [4]}}
    assert spec_to_json(functools.partial(make, channels=2)) == {"name": f"{name}:make_cnn", "kwargs": {"channels": 2}}
    ms = resolve_model(make, {"channels": 2})
    js = spec_to_json(ms)
    assert js == ms.to_json() == {"name": f"{name}:make_cnn", "kwargs": {"channels": 2}}
    torch.manual_seed(0)
    a = ms()
    torch.manual_seed(0)
    b = resolve_model(js)()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert import_path_of(nn.Linear) == "torch.nn.modules.linear:Linear"


def test_spec_to_json_refuses_what_workers_cannot_import():
    def local_factory():
        return nn.Linear(1, 1)

    with pytest.raises(SpecError, match="lambda or a function/class defined inside another function"):
        spec_to_json(lambda: nn.Linear(1, 1))
    with pytest.raises(SpecError, match="local_factory.*cannot be named by an import path"):
        spec_to_json(local_factory)
    # usable here, but to_json says why a worker cannot rebuild it
    ms = resolve_model(local_factory)
    assert isinstance(ms(), nn.Linear) and not ms.importable
    with pytest.raises(SpecError, match="cannot be named by an import path"):
        ms.to_json()
    with pytest.raises(SpecError, match="a TensorDataset object cannot be described by name"):
        spec_to_json(TensorDataset(torch.zeros(1)))
    with pytest.raises(SpecError, match=r"spec 'mlp' kwargs.act: a type cannot be sent to workers"):
        spec_to_json("mlp", {"act": nn.ReLU})


def test_default_search_paths(tmp_path):
    ck = tmp_path / "runs" / "sgd" / "epoch_1.pt"
    assert default_search_paths(ck)[:2] == [tmp_path / "runs" / "sgd", tmp_path / "runs"]


def _spawned_worker(spec, search_paths, queue):
    from landscape.specs import resolve_data, resolve_model

    model = resolve_model(spec, search_paths=search_paths)()
    data = resolve_data(spec["name"].replace("make_cnn", "make_data"), "test", {"n": 3}, search_paths=search_paths)
    queue.put((sum(p.numel() for p in model.parameters()), len(data)))


@pytest.mark.slow
def test_import_path_resolves_in_a_spawned_worker(user_module):
    # a fresh interpreter (as for --workers N and Slurm) gets only the JSON spec and the folders
    name, folder = user_module
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    spec = spec_to_json(f"{name}:make_cnn", {"channels": 3})
    proc = ctx.Process(target=_spawned_worker, args=(spec, [str(folder)], queue))
    proc.start()
    result = queue.get(timeout=120)
    proc.join(60)
    assert result == (sum(p.numel() for p in build_model_from_spec(spec, search_paths=[folder]).parameters()), 3)


def test_register_dataset_decorator_call_and_resolve():
    from landscape.data import ArrayDataset, get_dataset, register_dataset

    @register_dataset("test_specs_ramp")
    def ramp(split, n=3):
        return ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long), 1, split=split)

    assert get_dataset("test_specs_ramp", "test", n=2).split == "test"
    assert len(resolve_data("test_specs_ramp", "train", {"n": 5})) == 5
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("test_specs_ramp", ramp)
    register_dataset("test_specs_ramp", ramp, replace=True)
    with pytest.raises(ValueError, match="without ':'"):
        register_dataset("pkg:ramp", ramp)


@pytest.mark.parametrize("name", ["mlp", "resnet1d"])
def test_meta_count_leaves_weights_and_global_rng_as_a_single_build(name):
    # the meta-device pass draws no random numbers: seeded builds give the weights they gave
    # before the budget check existed, and the generator ends in the same state
    from landscape.models.registry import _REGISTRY

    torch.manual_seed(0)
    direct = _REGISTRY[name]()
    after_direct = torch.random.get_rng_state()
    torch.manual_seed(0)
    checked = build_model(name)
    assert torch.equal(torch.random.get_rng_state(), after_direct)
    for a, b in zip(direct.state_dict().values(), checked.state_dict().values()):
        assert torch.equal(a, b)
