"""Data forms and model outputs (landscape.inputs): every form gives the batches of the (x, y) tuple."""

from __future__ import annotations

import pytest
import torch
from reference import data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from landscape.data import ArrayDataset
from landscape.inputs import DataError, collect, model_output, split
from landscape.objective import Objective


class DictExamples(Dataset):
    """A map-style dataset of dict examples (no fast path: collated in chunks)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Record:
    """A batch type the objective does not know (needs batch_fn)."""

    def __init__(self, x, y):
        self.features, self.answer = x, y


def forms(x, y):
    """Every accepted data form holding the same 20 examples."""
    chunks = [(x[s:s + 6], y[s:s + 6]) for s in range(0, 20, 6)]
    return {
        "ArrayDataset": ArrayDataset(x, y, num_classes=3),
        "TensorDataset": TensorDataset(x, y),
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=7),
        "DataLoader(collate_fn)": DataLoader(TensorDataset(x, y), batch_size=7, collate_fn=lambda b: (
            torch.stack([e[0] for e in b]), torch.stack([e[1] for e in b]))),
        "map-style Dataset of dicts": DictExamples(x, y),
        "list of tuples": chunks,
        "list of lists (with extras)": [[a, b, torch.zeros(len(b))] for a, b in chunks],
        "generator of dicts": ({"input": a, "target": b} for a, b in chunks),
    }


def test_every_form_gives_the_batches_of_the_tuple():
    x, y = data(20, (5,))
    ref = split(*collect((x, y), 15), 4)
    for name, d in forms(x, y).items():
        got = split(*collect(d, 15), 4)
        assert len(got) == len(ref) == 4, name
        for (xa, ya), (xb, yb) in zip(ref, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), name


def test_dataloader_fast_path_only_for_in_order_loaders():
    x, y = data(20, (5,))
    ds = TensorDataset(x, y)
    # drop_last loses the last 6 examples: iterated as it batches, not sliced.
    _, ys = collect(DataLoader(ds, batch_size=7, drop_last=True))
    assert torch.equal(ys, y[:14])
    shuffled, _ = collect(DataLoader(ds, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled[shuffled[:, 0].argsort()], x[x[:, 0].argsort()])  # the same rows, permuted


def test_subclasses_with_their_own_getitem_are_not_sliced():
    x, y = data(6, (5,))

    class Scaled(TensorDataset):
        def __getitem__(self, i):
            a, b = super().__getitem__(i)
            return 2 * a, b

    xs, ys = collect(Scaled(x, y))
    assert torch.equal(xs, 2 * x) and torch.equal(ys, y)


def test_structured_inputs_regression_targets_and_batch_fn():
    g = torch.Generator().manual_seed(0)
    ids, mask, y = torch.randint(0, 9, (10, 4), generator=g), torch.ones(10, 4, dtype=torch.long), torch.randn(10, 2, generator=g)
    # HuggingFace style: inputs are every entry but the targets, passed as keyword arguments.
    hf = [{"input_ids": ids[s:s + 5], "attention_mask": mask[s:s + 5], "labels": y[s:s + 5]} for s in (0, 5)]
    inputs, targets = collect(hf)
    assert set(inputs) == {"input_ids", "attention_mask"} and torch.equal(inputs["input_ids"], ids)
    assert torch.equal(targets, y)  # 2-D float targets: an (x, y) pair, not a list of batches
    xy_inputs, xy_targets = collect((ids.float(), y))
    assert torch.equal(xy_targets, y) and xy_inputs.shape == (10, 4)
    tup, t2 = collect([((ids, mask), y)], max_samples=3)
    assert isinstance(tup, tuple) and tup[0].shape == (3, 4) and t2.shape == (3, 2)
    recs = [Record(ids[:5].float(), y[:5]), Record(ids[5:].float(), y[5:])]
    bx, by = collect(recs, batch_fn=lambda r: (r.features, r.answer))
    assert torch.equal(bx, ids.float()) and torch.equal(by, y)


def test_objective_calls_structured_inputs_as_args_and_kwargs(f64):
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask):
            return {"logits": self.lin(input_ids * attention_mask)}

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, a, b):
            return (self.lin(a * b), "extra")

    torch.manual_seed(0)
    kw, pair = KW(), Pair()
    pair.lin.load_state_dict(kw.lin.state_dict())
    x, y = data(9, (4,))
    m = torch.ones(9, 4)
    a = Objective(kw, [{"input_ids": x, "attention_mask": m, "labels": y}], batch_size=4)
    b = Objective(pair, [((x, m), y)], batch_size=4)
    ref = Objective(kw.lin, (x, y), batch_size=4)
    torch.testing.assert_close(a.loss(), ref.loss(), rtol=1e-14, atol=0)
    torch.testing.assert_close(b.loss(), ref.loss(), rtol=1e-14, atol=0)


def test_model_output_forms():
    z = torch.randn(3, 2)

    class WithLogits:
        def __init__(self):
            self.logits, self.hidden = z, None

    assert model_output(z) is z
    assert model_output((z, 1)) is z and model_output([z]) is z
    assert model_output({"loss": 0.0, "logits": z}) is z
    assert model_output(WithLogits()) is z
    assert model_output({"out": z}, output_fn=lambda o: o["out"]) is z

    class NoLogits:
        def __init__(self):
            self.scores = z

    with pytest.raises(TypeError, match=r"NoLogits.*scores.*accepted model outputs: a tensor"):
        model_output(NoLogits())
    with pytest.raises(TypeError, match=r"dict with keys \['out'\].*output_fn"):
        model_output({"out": z})


def test_bad_data_names_what_was_received_and_lists_the_accepted():
    x, y = data(8, (5,))
    cases = [
        (3, r"data of type int is not accepted; accepted: an ArrayDataset"),
        ([{"x": x}], r"dict with keys \['x'\] and no targets; accepted target keys: labels"),
        ([(x, [1, 2])], r"targets of type list"),
        ([("text", y)], r"inputs of type str.*accepted inputs: a tensor, a tuple of tensors or a dict"),
        ((x, y[:5]), r"without a common first \(example\) dimension"),
        ([x], r"is a tensor of shape \(8, 5\); accepted batches"),
        ([], r"yielded no batches"),
        ([(x[:4], y[:4]), (x[4:, :3], y[4:])], r"cannot be joined"),
        (TensorDataset(x), r"TensorDataset of 1 tensor"),
    ]
    for d, msg in cases:
        with pytest.raises((TypeError, ValueError), match=msg):
            collect(d)
    with pytest.raises(DataError, match="batch_fn returned"):
        collect([x], batch_fn=lambda b: b)
    with pytest.raises(TypeError, match="accepted"):
        Objective(tiny_mlp(), "data.csv")
