"""Conv3d: the quadratic construction in three dimensions (new; the paper treats images).

N_h = K^3 heads on the shifts of a K x K x K kernel, D_p = 4 (||delta||^2, delta_1, delta_2,
delta_3), and the same one-hot limit and Lemma 1 as in 2D.
"""

from __future__ import annotations

from spec import geometry, lemma1, quadratic
from spec.proof import centred_window, tends_to_one_hot, ALPHA
from spec.statement import Statement, Step


def _heads_count() -> bool:
    """N_h = K^3 distinct shifts and heads_for_kernel agrees, K = 1..4."""
    return all(
        lemma1.heads_for_kernel((k, k, k)) == k**3 == len(set(geometry.shifts((k, k, k))))
        for k in range(1, 5)
    )


def _one_hot_at(centre: tuple[int, int, int]) -> bool:
    """Softmax of -alpha ||delta - Delta||^2 over the 3x3x3 window tends to one-hot at Delta."""
    window = centred_window(3, 3)
    return tends_to_one_hot(quadratic.window_scores(ALPHA, centre, window), centre)


CONV3D = Statement(
    id="conv3d",
    reference="new",
    statement=(
        "Conv3d: N_h = K^3 heads, D_p = 4; the quadratic identity holds for n = 3 (symbolic), "
        "the softmax over a 3x3x3 window -> one-hot at its centre and at a corner (limit), and "
        "Lemma 1 holds for a 2x2x2 kernel with D_in = D_out = 1 (symbolic)"
    ),
    hypotheses=("delta = key - query", "alpha -> +oo"),
    proof=(
        Step("N_h = K^3 distinct shifts, K = 1..4 (instances)", _heads_count),
        Step("v . r_delta = -alpha(||delta - Delta||^2 - ||Delta||^2), n = 3, D_p = 4 (symbolic)",
             lambda: quadratic.identity_holds(3)),
        Step("3x3x3 window, Delta = (0, 0, 0): p_Delta -> 1 (limit)",
             lambda: _one_hot_at((0, 0, 0))),
        Step("3x3x3 window, Delta = (1, 1, 1) (corner): p_Delta -> 1 (limit)",
             lambda: _one_hot_at((1, 1, 1))),
        Step("Lemma 1, 2x2x2 kernel, 8 heads, D_in = D_out = 1 (symbolic)",
             lambda: lemma1.mhsa_equals_conv((2, 2, 2), 1, 1)),
    ),
)

STATEMENTS = (CONV3D,)
