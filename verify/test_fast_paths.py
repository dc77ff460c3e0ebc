"""fast-paths: every way the layer computes attention equals the plain dense reference.

Not a statement of the paper: the property every numerical check of the statements relies on. The
layer picks a path from its configuration (`RelativeSelfAttention.positional`): gathers ("shifts") for
hard-limit heads with one nearest key, one softmax per axis ("separable") for isotropic quadratic and
learned heads and for hard heads with ties, a dense softmax ("dense") for generalized heads, and
scaled_dot_product_attention with a positional bias ("bias") or none (content only) for content
scores. For random parameters (not converted ones), 1-3 dims and random geometries, the layer's
output and `attention_probabilities` equal `verify.reference.attention` within the rounding of both
computations (tolerances.fast_path_tolerance / probability_tolerance); so do the gradients of positional
layers (wrt x and the merge; in float64 also wrt the encoding's parameters), through the fused merge
with its hand-written backward, split into one-image chunks, and through the autograd merge that CUDA
and autocast use (tolerances.gradient_tolerances). Content layers' gradients are not checked here.
"""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from impl.attention import layer as layer_module
from impl.attention import positional_merge
from verify import checks, strategies
from verify.cases import LayerCase
from verify.profiles import examples
from verify.test_fast_paths_perf import one_image_chunks

PATHS = {
    # name: (layer_cases arguments, the kinds `positional` may return)
    "shifts": (dict(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(True),
                    centres=st.sampled_from(("random", "integer"))), ("shifts",)),
    # a tie needs both nearest keys in the grid; where one falls outside, the head is one-hot again
    "hard-ties": (dict(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(True),
                       centres=st.just("tie")), ("separable", "shifts")),
    "separable-quadratic": (dict(encoding=st.just("quadratic"), content=st.just(False), hard=st.just(False)),
                            ("separable",)),
    "separable-learned": (dict(encoding=st.just("learned"), content=st.just(False)), ("separable",)),
    "dense-generalized": (dict(encoding=st.just("generalized"), content=st.just(False)), ("dense",)),
    "content-with-positional": (dict(encoding=st.sampled_from(("quadratic", "generalized", "learned")),
                                     content=st.just(True)), ("bias",)),
    "content-only": (dict(encoding=st.just(None), content=st.just(True)), (None,)),
}


@pytest.mark.statement("fast-paths")
@pytest.mark.parametrize("path", list(PATHS))
@examples(0.6)
@given(data=st.data())
def test_layer_equals_reference(path: str, data):
    arguments, kinds = PATHS[path]
    case = data.draw(strategies.layer_cases(**arguments), label="case")
    layer, x = case.build()
    taken = layer.positional(tuple(x.shape[2:]), x.dtype, x.device)
    taken = None if taken is None else taken[0]
    event(f"path {taken}")
    path_check = (f"path taken: {taken!r}, expected one of {kinds!r}", float(taken not in kinds), 0.0)
    checks.fast_path("fast-paths", layer, x, case.describe(),
                     case.reproduce("print(layer.positional(x.shape[2:], x.dtype, x.device)[0], "
                                    "(layer(x) - reference.attention(layer, x).output).abs().max())"),
                     extra=[path_check])


@pytest.mark.statement("fast-paths")
@examples(1)
@given(case=strategies.layer_cases())
def test_any_layer_equals_reference(case: LayerCase):
    layer, x = case.build()
    checks.fast_path("fast-paths", layer, x, case.describe(),
                     case.reproduce("print(layer(x) - reference.attention(layer, x).output)"))


@pytest.mark.statement("fast-paths")
@examples(1.5)
@given(case=strategies.layer_cases(encoding=st.sampled_from(strategies.ENCODINGS), content=st.just(False)),
       seed=strategies.seeds())
def test_gradients_equal_reference(case: LayerCase, seed: int):
    """Backward of every positional path (the layer's hand-written backward included) against autograd
    through the plain reference: gradients wrt x and the merge, and in float64 wrt the encoding."""
    layer, x = case.build()
    layer.train()  # no cache; attn_dropout is 0, so train mode computes the same function
    upstream = _upstream(layer, x, seed)
    checks.fast_path_gradients("fast-paths", layer, x, upstream, case.describe(),
                               case.reproduce("# gradients of sum(layer(x) * upstream), upstream ~ N(0, 1)"))


ALTERNATIVES = {
    # the fused CPU merges split into chunks of one image (forward and hand-written backward)
    "one-image-chunks": one_image_chunks,
    # the merge left to autograd, which CUDA and autocast use: checked here on CPU
    "autograd-merge": lambda: mock.patch.object(layer_module, "positional_merge",
                                                functools.partial(positional_merge.positional_merge, fused=False)),
}


@pytest.mark.statement("fast-paths")
@pytest.mark.parametrize("alternative", list(ALTERNATIVES))
@examples(0.4)
@given(case=strategies.layer_cases(encoding=st.sampled_from(strategies.ENCODINGS), content=st.just(False)),
       seed=strategies.seeds())
def test_alternative_merges_change_nothing(alternative: str, case: LayerCase, seed: int):
    """Paths the layer takes elsewhere (large batches, CUDA/autocast) give the reference's output and
    gradients too."""
    layer, x = case.build()
    layer.train()
    upstream = _upstream(layer, x, seed)
    reproduce = case.reproduce(f"# under verify/test_fast_paths.py's ALTERNATIVES[{alternative!r}]")
    with ALTERNATIVES[alternative]():
        checks.fast_path("fast-paths", layer, x, f"{case.describe()}, {alternative}", reproduce)
        checks.fast_path_gradients("fast-paths", layer, x, upstream, f"{case.describe()}, {alternative}", reproduce)


def _upstream(layer, x, seed: int) -> torch.Tensor:
    with torch.no_grad():
        shape = layer(x).shape
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(x.dtype)




def _via_data(p: torch.Tensor) -> None:
    p.data.add_(0.75)


def _via_data_assignment(p: torch.Tensor) -> None:
    p.data = p.data + 0.75


def _via_vector_to_parameters(p: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector([p]) + 0.75, [p])


def _in_place(p: torch.Tensor) -> None:
    p.add_(0.75)


@pytest.mark.statement("fast-paths")
@pytest.mark.parametrize("change", [
    pytest.param(_in_place, id="in-place"),
    pytest.param(_via_data, id="data"),
    pytest.param(_via_data_assignment, id="data-assignment"),
    pytest.param(_via_vector_to_parameters, id="vector_to_parameters"),
])
def test_eval_output_follows_parameter_changes(change):
    """An eval-mode layer evaluated under no_grad, then given new centres, equals the reference for the
    new centres (its cached positional attention must not go stale)."""
    case = LayerCase(2, 2, (("heads", 4), ("alpha", 1.0)), ((1, 1, 1, 0, 0), (1, 1, 1, 0, 0)), size=(5, 5))
    layer, x = case.build()
    with torch.no_grad():
        layer(x)  # fills the cache
        change(layer.encoding.centre)
    checks.fast_path("fast-paths", layer, x, case.describe() + f", centres changed by {change.__name__}",
                     case.reproduce("with torch.no_grad():\n    layer(x); layer.encoding.centre.data.add_(0.75)\n"
                                    "    print((layer(x) - reference.attention(layer, x).output).abs().max())"))
