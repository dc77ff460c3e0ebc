"""fast-paths (performance): each fast path of `impl.attention` equals the layer's own dense path.

The dense path is the plain formula: the dense positional probabilities (`attention_probabilities`,
(H, Nq, Nk)), every head's average of the padded tokens, then the merge, as two einsums. Each fast path
gets the same probabilities in the form it takes and must return the same output and, through
autograd, the same gradients wrt the input, the merge and the encoding's parameters, within the
rounding of two computations (`tolerances.attention_rounding` and `tolerances.gradient_tolerances`,
once per side):

- `positional_merge`, fused (hand-written backwards, forced here to one image per chunk: `PositionalMerge`
  for separable heads, `DenseMerge` for dense ones) and left to autograd (`positional_merge_autograd`, the
  CUDA/autocast path), for separable heads (per-axis matrices) and dense ones (generalized: one matrix on
  the flattened grid);
- `shifts_as_conv` (hard heads that read a fixed shift of their query, run as a convolution that
  zero-pads itself, or on the padded input for the other padding modes) and
  `shifts_merge` (any hard heads: one gather, one projection);
- content layers: FlexAttention's score logic (`relative_score`, used as the score_mod on CUDA) equals
  the dense positional logits, and eager FlexAttention (CPU, forward only) equals the SDPA path.

Float64, random (not converted) layers, 1-3 dims, random geometries.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from impl.attention import content, dense_merge, gemm, positional_merge, product_merge, shifts
from impl.attention.dense_merge import attention_keep_mask
from impl.dropout import keep_probability
from verify import reference, strategies, tolerances
from verify.assertions import assert_all_within
from verify.cases import ConvertedCase, LayerCase
from verify.profiles import examples

STATEMENT = "fast-paths"

PATH_DTYPES = ("float64", "float32-onednn", "float32-blas")
"""The fused paths' dtypes: float32 under each CPU GEMM backend (`impl.attention.gemm`), whatever this
machine's default."""


def path_dtype_of(name: str) -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """A `PATH_DTYPES` name as (dtype, the context that sets its GEMM backend)."""
    dtype, _, backend = name.partition("-")
    return getattr(torch, dtype), gemm.backend(backend) if backend else contextlib.nullcontext()


@contextlib.contextmanager
def one_image_chunks():
    """Every fused path one image per chunk: their chunk loops are exercised."""
    with mock.patch.object(positional_merge, "CHUNK_BYTES", 1), \
            mock.patch.object(product_merge, "PRODUCT_CHUNK_BYTES", 1), \
            mock.patch.object(dense_merge, "CHUNK_BYTES", 1):
        yield


def dense_path(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's plain formula: attention_probabilities + einsum (positional layers)."""
    probs = layer.attention_probabilities(tuple(x.shape[2:]), x.dtype, x.device)
    tokens = layer.geometry.pad(x).flatten(2)
    y = torch.einsum("hqk,bck->bhqc", probs, tokens)
    weight = layer.merge.weight.view(layer.out_dim, layer.heads, layer.dim).to(x.dtype)
    out = torch.einsum("ohc,bhqc->boq", weight, y)
    if layer.merge.bias is not None:
        out = out + layer.merge.bias.to(x.dtype)[:, None]
    return out.reshape(*out.shape[:2], *layer.geometry.output_shape(x.shape[2:]))


def _separable_or_dense(layer, x: torch.Tensor, fused: bool) -> torch.Tensor:
    kind, value = layer.positional(tuple(x.shape[2:]), x.dtype, x.device)
    xp = layer.geometry.pad(x)
    merge = layer.merge
    if kind == "separable":
        return positional_merge.positional_merge(xp, merge.weight, merge.bias, value[0], value[1:], fused=fused)
    assert kind == "dense", kind
    out = positional_merge.positional_merge(xp.flatten(2), merge.weight, merge.bias, value, fused=fused)
    return out.reshape(*out.shape[:2], *layer.geometry.output_shape(x.shape[2:]))


def _shifts(layer, x: torch.Tensor, as_conv: bool) -> torch.Tensor:
    kind, indices = layer.positional(tuple(x.shape[2:]), x.dtype, x.device)
    assert kind == "shifts", kind
    xp = layer.geometry.pad(x)
    if as_conv:
        positions = [a.query_positions(n) for a, n in zip(layer.geometry.axes, x.shape[2:])]
        offsets = shifts.pure_shifts(indices, positions)
        if offsets is not None:
            geometry = layer.geometry
            args = (offsets, [a.margin_before for a in geometry.axes], [a.stride for a in geometry.axes],
                    geometry.output_shape(x.shape[2:]), layer.merge.weight, layer.merge.bias)
            if geometry.padding_mode == "zeros":  # the layer's way: the convolution pads
                out = shifts.shifts_as_conv(x, *args, max_taps=10**6,
                                            zero_pads=[(a.pad_before, a.pad_after) for a in geometry.axes])
            else:
                out = shifts.shifts_as_conv(xp, *args, max_taps=10**6)
            assert out is not None
            return out
    return shifts.shifts_merge(xp, indices, layer.merge.weight, layer.merge.bias)


def _run(fn, layer, x, upstream) -> dict:
    """Output and gradients of sum(fn(layer, x) * upstream), by name (layer.named_parameters + 'x')."""
    layer.zero_grad(set_to_none=True)
    layer.train()
    x = x.detach().clone().requires_grad_(True)
    out = fn(layer, x)
    (out * upstream).sum().backward()
    grads = {"x": x.grad}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    return {"out": out.detach(), "grads": grads}


def _compare(case: LayerCase, fn, name: str, *, fixed_encoding: bool = False) -> None:
    """fn(layer, x) against the dense path: output and every gradient, two computations' rounding;
    `fixed_encoding`: the encoding's parameters frozen (no gradient on either side)."""
    __tracebackhide__ = True
    layer, x = case.build()
    layer.encoding.requires_grad_(not fixed_encoding)
    ref = reference.attention(layer, x)
    generator = torch.Generator().manual_seed(case.seed + 7)
    upstream = torch.randn(ref.output.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    fast = _run(fn, layer, x, upstream)
    plain = _run(dense_path, layer, x, upstream)
    rounding = tolerances.attention_rounding(layer, ref, x.dtype)
    checks = [(f"max|{name} - dense| (output)", (fast["out"] - plain["out"]).abs(), 2 * rounding)]
    bounds = tolerances.gradient_tolerances(layer, x, upstream, ref)
    for key, bound in bounds.items():
        a, b = fast["grads"].get(key), plain["grads"].get(key)
        if a is None or b is None:
            checks.append((f"gradient wrt {key}: missing on {'both sides' if a is b else 'one side'}",
                           float((a is None) != (b is None)), 0.0))
            continue
        checks.append((f"max|{name} - dense| (d/d {key})", (a - b).abs(), 2 * bound))
    assert_all_within(STATEMENT, checks, f"{name}: {case.describe()}",
                      case.reproduce(f"# see verify/test_fast_paths_perf.py: {name}"))


positional_cases = strategies.layer_cases(encoding=st.sampled_from(("quadratic", "generalized", "learned")),
                                          content=st.just(False), hard=st.just(False),
                                          dtype=st.just("float64"))
hard_cases = strategies.layer_cases(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(True),
                                    dtype=st.just("float64"), centres=st.sampled_from(("random", "integer")))


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("fused", [True, False], ids=["fused-chunked", "autograd"])
@examples(0.4)
@given(case=positional_cases)
def test_positional_merge_equals_dense_path(fused: bool, case: LayerCase):
    with one_image_chunks():
        _compare(case, lambda layer, x: _separable_or_dense(layer, x, fused),
                 "PositionalMerge/DenseMerge" if fused else "positional_merge_autograd")


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("as_conv", [True, False], ids=["shifts_as_conv", "shifts_merge"])
@examples(0.4)
@given(case=hard_cases)
def test_shift_paths_equal_dense_path(as_conv: bool, case: LayerCase):
    layer, x = case.build()
    kind = layer.positional(tuple(x.shape[2:]), x.dtype, x.device)[0]
    if kind != "shifts":  # a tie: the separable path, covered above
        return
    _compare(case, lambda layer, x: _shifts(layer, x, as_conv), "shifts_as_conv" if as_conv else "shifts_merge")


@pytest.mark.statement(STATEMENT)
@examples(0.3)
@given(case=strategies.layer_cases(encoding=st.sampled_from(("quadratic", "generalized", "learned")),
                                   content=st.just(True), dtype=st.just("float64")))
def test_relative_score_equals_dense_logits(case: LayerCase):
    """FlexAttention's score logic, evaluated on every (query, key) pair, equals the dense positional bias."""
    layer, x = case.build()
    spatial = tuple(x.shape[2:])
    query_shape = layer.geometry.output_shape(spatial)
    key_shape = tuple(a.padded_length(n) for a, n in zip(layer.geometry.axes, spatial))
    tables = layer._score_tables(spatial, x.dtype, x.device)
    with torch.no_grad():
        dense = layer.positional(spatial, x.dtype, x.device)[1]                       # (H, Nq, Nk)
        heads, n_q, n_k = dense.shape
        h = torch.arange(heads)[:, None, None]
        q = torch.arange(n_q)[None, :, None]
        k = torch.arange(n_k)[None, None, :]
        flat = len(tables) == 1 and len(query_shape) > 1   # a non-separable encoding: one dense table
        qs, ks = ((n_q,), (n_k,)) if flat else (query_shape, key_shape)
        score = content.relative_score(h, q, k, tables, qs, ks)
        # both sum the same per-axis logits, in some order: gamma_n of the sum of their magnitudes
        magnitude = content.relative_score(h, q, k, [t.abs() for t in tables], qs, ks)
    bound = 2 * tolerances.gamma(layer.spatial_dims, x.dtype) * magnitude
    assert_all_within(STATEMENT, [("max|relative_score - dense logits|", (score - dense).abs(), bound)],
                      f"relative_score: {case.describe()}",
                      case.reproduce("# see verify/test_fast_paths_perf.py: relative_score"))


@pytest.mark.statement(STATEMENT)
# eager FlexAttention on CPU on purpose (the compiled kernel has no CPU backward): torch's advice to compile it is moot
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@examples(0.3)
@given(case=strategies.layer_cases(encoding=st.sampled_from(("quadratic", "generalized", "learned", None)),
                                   content=st.just(True), dtype=st.just("float64")))
def test_flex_attention_equals_sdpa(case: LayerCase):
    """Eager FlexAttention with the relative score_mod (the CUDA path's logic) equals the SDPA path."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    layer, x = case.build()
    spatial = tuple(x.shape[2:])
    query_shape = layer.geometry.output_shape(spatial)
    with torch.no_grad():
        xp = layer.geometry.pad(x)
        q, k = layer._queries_keys(xp, spatial)
        key_shape = tuple(xp.shape[2:])
        bias = layer.positional(spatial, x.dtype, x.device)
        sdpa = content.content_attention(q, k, xp, None if bias is None else bias[1], 0.0)
        tables = None if layer.encoding is None else layer._score_tables(spatial, x.dtype, x.device)
        if tables is not None and len(tables) == 1 and len(query_shape) > 1:
            flex = content.flex_content(q, k, xp, tables, (sdpa.shape[2],), (xp.flatten(2).shape[2],),
                                        compiled=False)
        else:
            flex = content.flex_content(q, k, xp, tables, query_shape, key_shape, compiled=False)
    ref = reference.attention(layer, x)
    # each side is one computation of every head's average: the layer's rounding bound with a merge of
    # all ones (summing every head and channel), divided by the channels, bounds one average
    bound = 2 * tolerances.attention_rounding(_ones_merge(layer), ref, x.dtype).amax() / layer.dim
    assert_all_within(STATEMENT, [("max|flex - sdpa| (per-head averages)", (flex - sdpa).abs(), bound)],
                      f"flex_content: {case.describe()}",
                      case.reproduce("# see verify/test_fast_paths_perf.py: flex_content"))


def _ones_merge(layer):
    """A copy of the layer whose merge weight is all ones and bias zero."""
    import copy

    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.merge.weight.fill_(1)
        if twin.merge.bias is not None:
            twin.merge.bias.zero_()
    return twin


def test_padded_bias_keeps_values_and_aligns_rows():
    bias = torch.randn(3, 5, 13)
    padded = content.padded_bias(bias)
    assert torch.equal(padded, bias)
    assert padded.stride(-2) % 8 == 0
    aligned = torch.randn(2, 3, 16)
    assert content.padded_bias(aligned) is aligned


def _plain_per_image(x, weight, bias, probs):
    """mix_dense + merge_heads: the per-image (dropout) path's plain formula."""
    y = reference.mix_dense(x, probs, (probs.shape[-2],))
    return reference.merge_heads(y, weight, bias)


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("dtype", PATH_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused-chunked", "autograd"])
@examples(0.3)
@given(batch=st.integers(1, 3), heads=st.integers(1, 4), channels=st.integers(1, 4), out_dim=st.integers(1, 4),
       tokens=st.integers(1, 12), queries=st.integers(1, 12), bias=st.booleans(), seed=strategies.seeds())
def test_per_image_probabilities_equal_plain_path(dtype, fused, batch, heads, channels, out_dim, tokens, queries,
                                                  bias, seed):
    """The attention-dropout path: one (H, Nq, Nk) matrix per image (dropped-out probabilities: >= 0, rows
    not summing to 1). Output and gradients wrt x, W, b and the probabilities equal mix_dense + merge_heads
    in float64 on the same inputs within twice gamma_n (of the path's dtype) of the sums of |terms| (those
    sums: the same computation on absolute values). In float32 on CPU the per-image products go through
    oneDNN (`axis_passes._per_image_apply`) or BLAS, in float64 through batched matmuls."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, tokens, generator=g, dtype=torch.float64)
    probs = torch.rand(batch, heads, queries, tokens, generator=g, dtype=torch.float64)
    probs = probs * (torch.rand(probs.shape, generator=g, dtype=torch.float64) > 0.3) / 0.7
    weight = torch.randn(out_dim, heads * channels, generator=g, dtype=torch.float64)
    b = torch.randn(out_dim, generator=g, dtype=torch.float64) if bias else None
    upstream = torch.randn(batch, out_dim, queries, generator=g, dtype=torch.float64)

    def run(fn, x, weight, b, probs, upstream):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, probs)]
        b_leaf = None if b is None else b.detach().clone().requires_grad_(True)
        out = fn(leaves[0], leaves[1], b_leaf, leaves[2])
        (out * upstream).sum().backward()
        return [out.detach()] + [t.grad for t in leaves] + ([] if b_leaf is None else [b_leaf.grad])

    path_dtype, gemm_backend = path_dtype_of(dtype)
    x, weight, probs, upstream = (t.to(path_dtype).double() for t in (x, weight, probs, upstream))
    b = None if b is None else b.to(path_dtype).double()
    with one_image_chunks(), gemm_backend:
        fast = run(lambda *a: positional_merge.positional_merge(*a, fused=fused),
                   *(None if t is None else t.to(path_dtype) for t in (x, weight, b, probs, upstream)))
    plain = run(_plain_per_image, x, weight, b, probs, upstream)
    absolute = run(_plain_per_image, x.abs(), weight.abs(), None if b is None else b.abs(), probs, upstream.abs())
    n = tokens + heads * channels + batch * queries + out_dim + 2
    names = ["output", "d/dx", "d/dW", "d/dprobs", "d/db"]
    checks = [(f"max|positional_merge - plain| ({name})", (f.double() - p).abs(),
               2 * tolerances.gamma(n, path_dtype) * a)
              for name, f, p, a in zip(names, fast, plain, absolute)]
    assert_all_within(STATEMENT, checks, f"per-image probabilities, {dtype}, fused={fused}, B={batch}, H={heads}, "
                      f"C={channels}, O={out_dim}, Nk={tokens}, Nq={queries}, bias={bias}", "")


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("device", strategies.DEVICES)
@pytest.mark.parametrize("dtype", PATH_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused-masked-per-chunk", "autograd-materialised"])
@examples(0.3)
@given(batch=st.integers(1, 3), heads=st.integers(1, 4), channels=st.integers(1, 4), out_dim=st.integers(1, 4),
       tokens=st.integers(1, 12), queries=st.integers(1, 12), p=st.sampled_from([0.0, 0.1, 0.5]),
       seed=strategies.seeds())
def test_attention_dropout_equals_plain_path_on_the_same_mask(device, dtype, fused, batch, heads, channels,
                                                             out_dim, tokens, queries, p, seed):
    """positional_merge(..., dropout=p) on shared probabilities P (H, Nq, Nk): fused, each image's matrix
    where(keep, P / q, 0) (q = keep_probability(p)) is built image by image (`DenseMerge`) and P's gradient
    summed straight from the per-image ones; not fused, the dropped-out (B, H, Nq, Nk) probabilities are
    materialised. Both equal the plain per-image formula (mix_dense + merge_heads) on the same mask
    (`dense_merge.attention_keep_mask` under the same seed), output and gradients wrt x, W and P, within
    twice gamma_n of the sums of |terms| (n bounds the chains of sums of both computations). p = 0 is the
    dense path without dropout: every image's matrix P (one product over the batch in `DenseMerge`). On
    CUDA the mask is drawn there (its own generator, seeded alike) and the products are batched matmuls."""
    if device != "cpu" and dtype == "float32-onednn":
        pytest.skip("the GEMM backend is the CPU's: float32 on CUDA runs once, as float32-blas")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, tokens, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(heads, queries, tokens, generator=g, dtype=torch.float64), -1)
    weight = torch.randn(out_dim, heads * channels, generator=g, dtype=torch.float64)
    upstream = torch.randn(batch, out_dim, queries, generator=g, dtype=torch.float64)
    path_dtype, gemm_backend = path_dtype_of(dtype)
    x, weight, probs, upstream = (t.to(path_dtype).double() for t in (x, weight, probs, upstream))
    torch.manual_seed(seed)
    keep = attention_keep_mask(batch, probs.shape, p, device).cpu()

    def run(fn, x, weight, probs, upstream):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, probs)]
        out = fn(*leaves)
        (out * upstream).sum().backward()
        return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]

    def plain(x, weight, probs):
        return _plain_per_image(x, weight, None, torch.where(keep, probs / keep_probability(p), 0))

    def fast(x, weight, probs):
        torch.manual_seed(seed)  # the same mask as `keep`
        return positional_merge.positional_merge(x, weight, None, probs, fused=fused, dropout=p)

    with one_image_chunks(), gemm_backend:
        got = run(fast, *(t.to(device, path_dtype) for t in (x, weight, probs, upstream)))
    want = run(plain, x, weight, probs, upstream)
    absolute = run(plain, x.abs(), weight.abs(), probs, upstream.abs())
    # n bounds every chain of sums of either computation: the plain one (tokens, then heads x channels; the
    # gradients' out_dim, queries and batch sums) and DenseMerge's (channels, then tokens x heads; queries,
    # then heads x out_dim; batch x tokens for W, batch for P)
    n = channels + heads * (channels + tokens + out_dim) + batch * (tokens + queries) + queries + out_dim + 2
    checks = [(f"max|positional_merge(dropout) - plain| ({name})", (f.double() - w).abs(),
               2 * tolerances.gamma(n, path_dtype) * a)
              for name, f, w, a in zip(["output", "d/dx", "d/dW", "d/dP"], got, want, absolute)]
    assert_all_within(STATEMENT, checks, f"attention dropout p={p}, {dtype}, fused={fused}, B={batch}, H={heads}, "
                      f"C={channels}, O={out_dim}, Nk={tokens}, Nq={queries}", "")


def test_attention_dropout_needs_shared_dense_probabilities():
    x, weight = torch.randn(2, 3, 4), torch.randn(5, 6)
    with pytest.raises(ValueError, match="dropout must be a float in \\[0, 1\\)"):
        positional_merge.positional_merge(x, weight, None, torch.rand(2, 4, 4), dropout=1.0)
    with pytest.raises(ValueError, match="shared dense probabilities"):
        positional_merge.positional_merge(x, weight, None, torch.rand(2, 2, 4, 4), dropout=0.1)


@pytest.mark.statement(STATEMENT)
@examples(0.4)
@given(case=strategies.converted_cases())
def test_product_merge_equals_dense_path(case: ConvertedCase):
    layer, x = case.build()
    kind, value = layer.positional(tuple(x.shape[2:]), x.dtype, x.device)
    assert kind == "separable" and product_merge.product_groups(value[0], value[1:]) is not None, \
        "a converted convolution's heads must share their per-axis matrices"
    with one_image_chunks():
        _compare(case, lambda layer, x: layer(x), "ProductMerge")


@pytest.mark.statement(STATEMENT)
@examples(0.4)
@given(case=strategies.converted_cases())
def test_product_merge_with_a_fixed_encoding_equals_dense_path(case: ConvertedCase):
    """A converted convolution with its encoding frozen (`layer.encoding.requires_grad_(False)`: the merge
    alone fine-tuned): `ProductMerge`'s backward takes every row group at once (`_fixed_probs_backward`)."""
    with one_image_chunks():
        _compare(case, lambda layer, x: layer(x), "ProductMerge, fixed encoding", fixed_encoding=True)


@pytest.mark.statement(STATEMENT)
@pytest.mark.parametrize("dtype", PATH_DTYPES)
@pytest.mark.parametrize("fixed", [False, True], ids=["probabilities-trained", "probabilities-fixed"])
@examples(0.3)
@given(batch=st.integers(1, 2), row_groups=st.integers(1, 3), col_groups=st.integers(1, 3),
       channels=st.integers(1, 4), out_dim=st.integers(1, 4), sizes=st.tuples(*[st.integers(1, 5)] * 4),
       bias=st.booleans(), seed=strategies.seeds())
def test_shared_matrices_equal_plain_path(dtype, fixed, batch, row_groups, col_groups, channels, out_dim, sizes,
                                          bias, seed):
    """`ProductMerge` (heads that share their per-axis matrices: every pair of Gq row and Gk column
    matrices once) on separable probabilities, with the probabilities' gradients or without them (fixed
    encodings: `_fixed_probs_backward`). Output and gradients equal mix_separable + merge_heads in float64
    on the same inputs within twice gamma_n (of the path's dtype) of the sums of |terms|, n bounding every
    chain of sums. In float32 on CPU the GEMMs go through oneDNN or BLAS."""
    assume(row_groups * col_groups >= 2)  # one head shares nothing: not a ProductMerge case
    q0, k0, q1, k1 = sizes
    g = torch.Generator().manual_seed(seed)
    rows = torch.rand(row_groups, q0, k0, generator=g, dtype=torch.float64)
    cols = torch.rand(col_groups, q1, k1, generator=g, dtype=torch.float64)
    pairs = [(r, c) for r in range(row_groups) for c in range(col_groups)]
    order = torch.randperm(len(pairs), generator=g).tolist()               # heads in any order of the pairs
    query_probs = torch.stack([rows[pairs[i][0]] for i in order])
    key_probs = torch.stack([cols[pairs[i][1]] for i in order])
    heads = len(pairs)
    x = torch.randn(batch, channels, k0, k1, generator=g, dtype=torch.float64)
    weight = torch.randn(out_dim, heads * channels, generator=g, dtype=torch.float64)
    b = torch.randn(out_dim, generator=g, dtype=torch.float64) if bias else None
    upstream = torch.randn(batch, out_dim, q0, q1, generator=g, dtype=torch.float64)

    def plain(x, weight, b, query_probs, key_probs):
        return reference.merge_heads(reference.mix_separable(x, [query_probs, key_probs]), weight, b)

    def run(fn, x, weight, b, query_probs, key_probs, upstream):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight)]
        probs = [t.detach().clone().requires_grad_(not fixed) for t in (query_probs, key_probs)]
        b_leaf = None if b is None else b.detach().clone().requires_grad_(True)
        out = fn(leaves[0], leaves[1], b_leaf, *probs)
        (out * upstream).sum().backward()
        grads = [t.grad for t in leaves + ([] if fixed else probs)]
        return [out.detach()] + grads + ([] if b_leaf is None else [b_leaf.grad])

    path_dtype, gemm_backend = path_dtype_of(dtype)
    x, weight, query_probs, key_probs, upstream = (t.to(path_dtype).double()
                                                   for t in (x, weight, query_probs, key_probs, upstream))
    b = None if b is None else b.to(path_dtype).double()
    assert product_merge.product_groups(query_probs, [key_probs]) is not None
    with one_image_chunks(), gemm_backend:
        fast = run(lambda x, w, b, qp, kp: positional_merge.positional_merge(x, w, b, qp, [kp], fused=True),
                   *(None if t is None else t.to(path_dtype) for t in (x, weight, b, query_probs, key_probs,
                                                                       upstream)))
    exact = run(plain, x, weight, b, query_probs, key_probs, upstream)
    absolute = run(plain, x.abs(), weight.abs(), None if b is None else b.abs(), query_probs, key_probs,
                   upstream.abs())
    n = (batch + heads * (channels + out_dim)) * (q0 + k0) * (q1 + k1)
    names = ["output", "d/dx", "d/dW"] + ([] if fixed else ["d/dquery_probs", "d/dkey_probs"]) + ["d/db"]
    assert len(fast) == len(names[:len(fast)]) == len(exact)
    checks = [(f"max|ProductMerge - plain| ({name})", (f.double() - e).abs(), 2 * tolerances.gamma(n, path_dtype) * a)
              for name, f, e, a in zip(names, fast, exact, absolute)]
    assert_all_within(STATEMENT, checks, f"shared matrices, {dtype}, fixed={fixed}, B={batch}, Gq={row_groups}, "
                      f"Gk={col_groups}, C={channels}, O={out_dim}, sizes={sizes}, bias={bias}", "")


def test_product_groups_finds_the_shared_matrices():
    rows = torch.rand(2, 4, 5)
    cols = torch.rand(3, 6, 7)
    heads = [(r, k) for k in range(3) for r in range(2)]  # any order of the pairs
    query_probs = torch.stack([rows[r] for r, _ in heads])
    key_probs = torch.stack([cols[k] for _, k in heads])
    table = product_merge.product_groups(query_probs, [key_probs])
    assert table is not None and table.shape == (2, 3)
    assert sorted(table.flatten().tolist()) == list(range(6))  # every head once
    for r in range(2):  # a row of the table: one query-axis matrix; a column: one key-axis matrix
        for k in range(3):
            assert torch.equal(query_probs[table[r, k]], query_probs[table[r, 0]])
            assert torch.equal(key_probs[table[r, k]], key_probs[table[0, k]])
    assert not torch.equal(query_probs[table[0, 0]], query_probs[table[1, 0]])
    # heads listed row group by row group (a converted convolution's taps): the table in that order, so
    # each row group's merge blocks are a slice of the weight
    ordered = [(r, k) for r in range(2) for k in range(3)]
    table = product_merge.product_groups(torch.stack([rows[r] for r, _ in ordered]),
                                         [torch.stack([cols[k] for _, k in ordered])])
    assert torch.equal(table.flatten(), torch.arange(6))
    # a pair missing (two heads on the same pair): no product
    repeated = heads[:-1] + [heads[0]]
    assert product_merge.product_groups(torch.stack([rows[r] for r, _ in repeated]),
                                        [torch.stack([cols[k] for _, k in repeated])]) is None
    # all distinct: no sharing
    assert product_merge.product_groups(torch.rand(6, 4, 5), [torch.rand(6, 6, 7)]) is None
