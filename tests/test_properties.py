"""Property-based tests (hypothesis) for the small exact pieces everything relies on."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.analyses.apgd import checkpoints, lp_norm, project
from landscape.checkpoint import strip_prefixes

vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30)
radii = st.floats(1e-6, 1e2, allow_nan=False)
norms = st.sampled_from(["l2", "linf"])


@settings(max_examples=200, deadline=None)
@given(vectors, radii, norms)
def test_projection_is_feasible_idempotent_and_nearest(values, rho, norm):
    u = torch.tensor(values, dtype=torch.float64)
    p = project(u, rho, norm)
    assert lp_norm(p, norm) <= rho * (1 + 1e-12)
    torch.testing.assert_close(project(p, rho, norm), p, rtol=1e-12, atol=1e-12)
    if lp_norm(u, norm) <= rho:
        torch.testing.assert_close(p, u, rtol=0, atol=0)
    # nearest point: no feasible point on the segment towards the origin is closer
    for t in (0.0, 0.5, 0.9):
        q = project(t * u, rho, norm)
        assert torch.linalg.vector_norm(u - p) <= torch.linalg.vector_norm(u - q) + 1e-9


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2000))
def test_apgd_checkpoints_match_exact_rational_schedule(steps):
    # Croce & Hein (2020): p0=0, p1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in hundredths.
    p_prev, p, marks = 0, 22, []
    while p <= 100:
        marks.append(math.ceil(p * steps / 100))
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    expected = sorted({w for w in marks if 0 < w <= steps})
    got = checkpoints(steps)
    assert got == expected


@given(st.lists(st.sampled_from(["module.", "_orig_mod."]), max_size=4), st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True))
def test_strip_prefixes_any_wrapper_nesting(prefixes, name):
    if name.startswith(("module.", "_orig_mod.")):
        return
    assert list(strip_prefixes({"".join(prefixes) + name: 0})) == [name]
