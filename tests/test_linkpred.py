"""Exact CH link prediction against the slow reference of CH-SPEC section 2."""

import numpy as np
import pytest
import torch
from ch_reference import reference_node_scores, reference_scores
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chsnn import MODELS, ch_scores, ch_scores_batched, count_l3_paths, linkpred

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def structured_masks(draw, max_side: int = 9, shape=None):
    """Random bipartite masks with the structures that break naive formulas:
    hubs (fully linked rows/columns), isolated nodes (empty rows/columns),
    fully linked blocks, and degenerate 1-by-n shapes."""
    n_out, n_in = shape or (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    weight = draw(st.sampled_from([1, 2, 4, 8]))  # about 1/weight of cells linked
    cell = st.sampled_from([True] + [False] * (weight - 1))
    m = draw(arrays(np.bool_, (n_out, n_in), elements=cell))
    if draw(st.booleans()):
        r0, r1 = sorted(draw(st.lists(st.integers(0, n_out), min_size=2, max_size=2)))
        c0, c1 = sorted(draw(st.lists(st.integers(0, n_in), min_size=2, max_size=2)))
        m[r0:r1, c0:c1] = True
    for row in draw(st.lists(st.integers(0, n_out - 1), max_size=2)):
        m[row, :] = True
    for col in draw(st.lists(st.integers(0, n_in - 1), max_size=2)):
        m[:, col] = True
    for row in draw(st.lists(st.integers(0, n_out - 1), max_size=2)):
        m[row, :] = False
    for col in draw(st.lists(st.integers(0, n_in - 1), max_size=2)):
        m[:, col] = False
    return m


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-9, atol=1e-12)


def test_hand_computed_single_path():
    # Links x0-y0, x1-y0, x1-y1; the absent x0-y1 has the one path x0-y0-x1-y1.
    # y0: deg 2, di 1 (x1), de 0; x1: deg 2, di 1 (y0), de 0.
    mask = torch.tensor([[1, 1], [0, 1]])
    expected = {"RA": 1 / 2, "CH2": 2.0, "CH3": 1.0, "CH3.1": 2.0}
    for model, value in expected.items():
        scores = ch_scores(mask, model)
        assert scores[1, 0].item() == pytest.approx(value, rel=1e-15)
        assert torch.count_nonzero(scores) == 1


@PROPERTY
@given(structured_masks(), st.sampled_from(MODELS), st.sampled_from([None, "wedge", "dense"]))
def test_exact_equals_reference(mask, model, kernel):
    assert_close(ch_scores(torch.from_numpy(mask), model, kernel=kernel), reference_scores(mask, model))


@PROPERTY
@given(structured_masks(), st.sampled_from(MODELS), st.sampled_from([None, "wedge", "dense"]))
def test_node_equals_reference(mask, model, kernel):
    assert_close(ch_scores(torch.from_numpy(mask), model, "node", kernel=kernel), reference_node_scores(mask, model))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.data())
def test_one_by_n_shapes(n, data):
    mask = data.draw(structured_masks(shape=data.draw(st.sampled_from([(1, n), (n, 1)]))))
    for model in MODELS:
        assert_close(ch_scores(torch.from_numpy(mask), model), reference_scores(mask, model))


@PROPERTY
@given(structured_masks(max_side=12), st.sampled_from(MODELS), st.sampled_from(["exact", "node"]))
def test_transpose_invariance(mask, model, method):
    m = torch.from_numpy(mask)
    assert_close(ch_scores(m.T, model, method), ch_scores(m, model, method).T)


@PROPERTY
@given(structured_masks(max_side=12), st.sampled_from(MODELS), st.integers(0, 2**31), st.sampled_from(["exact", "node"]))
def test_permutation_invariance(mask, model, seed, method):
    g = torch.Generator().manual_seed(seed)
    m = torch.from_numpy(mask)
    rows, cols = torch.randperm(m.shape[0], generator=g), torch.randperm(m.shape[1], generator=g)
    assert_close(ch_scores(m[rows][:, cols], model, method), ch_scores(m, model, method)[rows][:, cols])


def _hub_graph(seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random((30, 45)) < 0.12
    m[3] = True  # output hub
    m[:, 7] = True  # input hub
    m[10:16, 20:28] = True  # fully linked block
    m[5] = False  # isolated output
    m[:, 40] = False  # isolated input
    return m


@pytest.mark.parametrize("model", MODELS)
def test_exact_on_larger_graph_with_hubs_and_blocks(model):
    mask = _hub_graph()
    assert_close(ch_scores(torch.from_numpy(mask), model), reference_scores(mask, model))


@pytest.mark.parametrize("method", ["exact", "node"])
def test_batched_equals_one_by_one(method):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 7, 11, generator=g) < 0.3
    masks[2] = False  # an empty graph in the stack
    masks[4, :, 3] = True
    for kernel in linkpred.KERNELS:
        batched = ch_scores_batched(masks, "CH3", method, kernel=kernel)
        for b in range(masks.shape[0]):
            assert_close(batched[b], ch_scores(masks[b], "CH3", method, kernel="wedge"))


# Chunked (blocked) dense kernels against the one-pass wedge kernel ----------------


def assert_exact(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-12, atol=1e-12)


def _dense_both_sides(mask, model, chunk, method="exact"):
    """The dense kernel grouped by input nodes and by output nodes (the
    transposed graph): the two orientations the planner may choose."""
    h = linkpred._node_terms(model)
    fn = linkpred._dense_exact if method == "exact" else linkpred._dense_node
    by_in = fn(mask, h, torch.float64, chunk).masked_fill_(mask, 0.0)
    by_out = fn(mask.t().contiguous(), h, torch.float64, chunk).t().masked_fill_(mask, 0.0)
    return by_in, by_out


@PROPERTY
@given(structured_masks(max_side=12), st.sampled_from(MODELS), st.sampled_from([1, 2, 3, 5, 64]))
def test_chunked_exact_equals_unchunked(mask, model, chunk):
    m = torch.from_numpy(mask)
    one_pass = ch_scores(m, model, kernel="wedge")
    for got in _dense_both_sides(m, model, chunk):
        assert_exact(got, one_pass)
    assert_exact(ch_scores(m, model, chunk=chunk), one_pass)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_exact_on_hubs_isolated_nodes_and_blocks(model, chunk):
    m = torch.from_numpy(_hub_graph(1))
    expected = reference_scores(m.numpy(), model)
    for got in _dense_both_sides(m, model, chunk):
        assert_exact(got, expected)
    assert_exact(ch_scores(m, model, "exact", chunk=chunk), ch_scores(m, model, "exact", kernel="wedge"))


@PROPERTY
@given(structured_masks(max_side=12), st.sampled_from(MODELS), st.sampled_from([1, 2, 7, 64]))
def test_matrix_product_node_equals_brute_force(mask, model, chunk):
    m = torch.from_numpy(mask)
    brute = _brute_force_node(mask, model)
    for got in _dense_both_sides(m, model, chunk, "node"):
        assert_exact(got, brute)
    assert_exact(ch_scores(m, model, "node", chunk=chunk), brute)
    assert_exact(ch_scores(m, model, "node", kernel="wedge"), brute)


def _brute_force_node(mask, model):
    """CH-SPEC section 2's L3n, term by term: for an absent (x, y), add
    h(x1) for every x1 in N(y) sharing an output with x and h(y1) for every
    y1 in N(x) sharing an input with y, where with c common neighbours,
    di = c and de = deg - 1 - c; h = 1/deg (RA), (1+di)/(1+de) (CH2),
    1/(1+de) (CH3), 1/(1/(1+di) + de) (CH3.1)."""
    m = np.asarray(mask, dtype=bool)
    n_out, n_in = m.shape

    def h(deg, c):
        de = deg - 1 - c
        return {"RA": 1 / deg, "CH2": (1 + c) / (1 + de), "CH3": 1 / (1 + de), "CH3.1": 1 / (1 / (1 + c) + de)}[model]

    out = np.zeros((n_out, n_in))
    for y in range(n_out):
        for x in range(n_in):
            if m[y, x]:
                continue
            for x1 in range(n_in):
                c = int(np.sum(m[:, x1] & m[:, x]))
                if m[y, x1] and x1 != x and c > 0:
                    out[y, x] += h(int(m[:, x1].sum()), c)
            for y1 in range(n_out):
                c = int(np.sum(m[y1] & m[y]))
                if m[y1, x] and y1 != y and c > 0:
                    out[y, x] += h(int(m[y1].sum()), c)
    return out


def test_internal_fallbacks_agree(monkeypatch):
    """Sort-based counting, 64-bit indices and torch's sparse product (the
    accelerator path, exercised here on the CPU) give the same scores.
    Patched in the modules that read them at call time."""
    masks = torch.from_numpy(np.stack([_hub_graph(0), _hub_graph(1)]))
    expected = {m: ch_scores_batched(masks, "CH3", m) for m in ("exact", "node")}
    products = []

    def torch_product(*args):
        products.append(args)
        return linkpred.spgemm.spgemm_dense_torch(*args)

    monkeypatch.setattr(linkpred.wedge, "DENSE_COUNT_BINS", 0)
    monkeypatch.setattr(linkpred.wedge, "INT32_LIMIT", 0)
    monkeypatch.setattr(linkpred.spgemm, "spgemm_dense_cpu", torch_product)
    for method, scores in expected.items():
        assert_close(ch_scores_batched(masks, "CH3", method, kernel="wedge"), scores)
    assert products, "the patched product was not used"
    assert linkpred.wedge.Wedges(masks, masks.nonzero(as_tuple=True)).p_col.dtype == torch.int64


def test_linked_positions_zero_and_output_format():
    mask = torch.from_numpy(_hub_graph()).float()  # a 0/1 float mask is accepted
    scores = ch_scores(mask)
    assert scores.shape == mask.shape and scores.dtype == torch.float64 and scores.device == mask.device
    assert torch.all(scores[mask.bool()] == 0)
    assert torch.all(scores >= 0) and scores.max() > 0
    assert ch_scores(mask, dtype=torch.float32).dtype == torch.float32
    assert_close(ch_scores(mask.numpy()), scores)  # numpy input


def test_empty_and_full_masks():
    assert torch.count_nonzero(ch_scores(torch.zeros(4, 5, dtype=torch.bool))) == 0
    assert torch.count_nonzero(ch_scores(torch.ones(4, 5, dtype=torch.bool))) == 0
    assert ch_scores(torch.zeros(0, 5, dtype=torch.bool)).shape == (0, 5)


def test_count_l3_paths_brute_force():
    m = _hub_graph(2)
    brute = sum(
        1 for x in range(m.shape[1]) for y1 in np.flatnonzero(m[:, x]) for x1 in np.flatnonzero(m[y1]) for y in np.flatnonzero(m[:, x1])
    )
    assert count_l3_paths(torch.from_numpy(m)) == brute


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ch_scores(torch.ones(3, 3), model="CH4"), "valid models are RA, CH2, CH3, CH3.1"),
        (lambda: ch_scores(torch.ones(3, 3), method="fast"), "valid methods are exact, node, auto"),
        (lambda: ch_scores(torch.ones(3)), "2-D"),
        (lambda: ch_scores(torch.ones(2, 3, 3)), "2-D"),
        (lambda: ch_scores(torch.tensor([[0.0, 0.5]])), "binary"),
        (lambda: ch_scores(torch.tensor([[0, 2]])), "binary"),
        (lambda: ch_scores_batched(torch.ones(3, 3)), "3-D"),
        (lambda: ch_scores(torch.ones(3, 3), kernel="fast"), "valid kernels are wedge, dense"),
        (lambda: ch_scores(torch.ones(3, 3), chunk=0), "chunk must be a whole number >= 1"),
        (lambda: ch_scores(torch.ones(3, 3), kernel="wedge", chunk=2), "dense kernel only"),
        (lambda: ch_scores(torch.ones(3, 3), memory_gb=-1.0), "memory_gb must be a positive"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["exact", "node"])
@pytest.mark.parametrize("kernel", [None, "wedge", "dense"])
def test_cuda_equals_cpu(method, kernel):
    mask = torch.from_numpy(_hub_graph())
    on_gpu = ch_scores(mask.cuda(), "CH3", method, kernel=kernel)
    assert on_gpu.device.type == "cuda"
    assert_close(on_gpu.cpu(), ch_scores(mask, "CH3", method, kernel="wedge"))


def _memory_mask():
    g = torch.Generator().manual_seed(3)
    return torch.rand(12, 20, generator=g) < 0.4


def test_memory_budget_exceeded_raises_clear_error(monkeypatch):
    monkeypatch.setenv(linkpred.MEMORY_ENV, "0.000001")  # 1 KiB: less than the dense layer itself
    with pytest.raises(linkpred.LinkPredictionMemoryError) as info:
        ch_scores(_memory_mask(), "CH3", "exact")
    msg = str(info.value)
    assert isinstance(info.value, MemoryError)
    assert 'method="node"' in msg and "linkpred: node" in msg and "linkpred: auto" in msg
    assert "GiB" in msg and "wedge entries" in msg and "12x20" in msg
    assert "even one chunk" in msg and "blocks of one node" in msg
    assert "initial_density" in msg and linkpred.MEMORY_ENV in msg
    with pytest.raises(MemoryError):
        ch_scores_batched(_memory_mask().expand(3, 12, 20), "CH3", "node")
    with pytest.raises(MemoryError):
        ch_scores(_memory_mask(), "CH3", "auto")


def _dense_min_bytes(mask, method="exact"):
    return min(p.need(1) for p in linkpred._plans(mask.unsqueeze(0), method) if p.kernel == "dense")


def test_budget_smaller_than_one_chunk_raises(monkeypatch):
    """The dense kernel's smallest chunk is one middle node: a budget below it
    (and below the wedge tables) is refused before any allocation, by name."""
    monkeypatch.delenv(linkpred.MEMORY_ENV, raising=False)
    mask = torch.from_numpy(_hub_graph())
    one = _dense_min_bytes(mask)
    with pytest.raises(linkpred.LinkPredictionMemoryError, match="even one chunk.*blocks of one node"):
        ch_scores(mask, "CH3", "exact", kernel="dense", memory_gb=(one - 1) / 2**30)
    # exactly one node's block fits: scores computed, one node per block
    got = ch_scores(mask, "CH3", "exact", kernel="dense", memory_gb=one / 2**30)
    assert linkpred.last_choice()["linkpred_chunk"] == 1
    assert_close(got, reference_scores(mask.numpy(), "CH3"))
    # a forced chunk over the budget is refused, naming that chunk
    with pytest.raises(linkpred.LinkPredictionMemoryError, match="blocks of 20"):
        ch_scores(mask, "CH3", "exact", chunk=20, memory_gb=one / 2**30)


def test_auto_falls_back_to_node_and_records_the_choice(monkeypatch):
    monkeypatch.delenv(linkpred.MEMORY_ENV, raising=False)
    mask = torch.from_numpy(_hub_graph())
    assert_close(ch_scores(mask, "CH3", "auto"), reference_scores(mask.numpy(), "CH3"))
    assert linkpred.last_choice()["linkpred"] == "exact"
    exact_min = min(p.min_bytes() for p in linkpred._plans(mask.unsqueeze(0), "exact"))
    node_min = min(p.min_bytes() for p in linkpred._plans(mask.unsqueeze(0), "node"))
    assert node_min < exact_min
    budget = (node_min + exact_min) / 2 / 2**30
    got = ch_scores(mask, "CH3", "auto", memory_gb=budget)
    choice = linkpred.last_choice()
    assert choice["linkpred"] == "node" and choice["linkpred_kernel"] in linkpred.KERNELS
    assert_close(got, reference_node_scores(mask.numpy(), "CH3"))
    with pytest.raises(linkpred.LinkPredictionMemoryError):  # exact stays exact
        ch_scores(mask, "CH3", "exact", memory_gb=budget)
    ch_scores(torch.zeros(3, 4, dtype=torch.bool), "CH3", "auto")
    assert linkpred.last_choice() == {"linkpred": "exact", "linkpred_kernel": "none"}


def test_engine_config_accepts_auto():
    from chsnn.sparse.config import EngineConfig

    assert EngineConfig(linkpred="auto").linkpred == "auto"


def test_memory_budget_unset_or_large_scores_unchanged(monkeypatch):
    mask = _memory_mask()
    monkeypatch.delenv(linkpred.MEMORY_ENV, raising=False)
    unset = ch_scores(mask, "CH3", "exact")
    monkeypatch.setenv(linkpred.MEMORY_ENV, "1000")
    large = ch_scores(mask, "CH3", "exact")
    assert torch.equal(unset, large)
    expected = reference_scores(mask.numpy(), "CH3")
    np.testing.assert_allclose(large.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_memory_estimate_monotonic_in_density():
    g = torch.Generator().manual_seed(4)
    u = torch.rand(1, 30, 50, generator=g)
    estimates = [linkpred.estimate_memory(u < d) for d in (0.05, 0.1, 0.2, 0.4, 0.8)]
    wedges = [w for w, _ in estimates]
    peaks = [b for _, b in estimates]
    assert wedges == sorted(wedges) and peaks == sorted(peaks) and wedges[0] < wedges[-1]
    n_p, n_q = linkpred._wedge_counts(u < 0.3)
    w = linkpred._Wedges((u < 0.3), (u < 0.3).nonzero(as_tuple=True))
    assert (n_p, n_q) == (w.p_col.numel(), w.q_col.numel())  # the estimate counts the real tables
    assert linkpred.estimate_memory(u < 0.3, "node")[1] < linkpred.estimate_memory(u < 0.3, "exact")[1]
