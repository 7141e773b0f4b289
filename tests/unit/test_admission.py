"""The admission seam: SGLang's clip is the request's estimate only inside its own scope."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sglang.srt.managers import schedule_policy

from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin import admission
from memento_sglang.sglang_plugin.runtime import MementoRuntime
from tests.support.synthetic import spec, tokens

STOCK = schedule_policy.CLIP_MAX_NEW_TOKENS


@pytest.fixture
def estimator():
    est = admission.AdmissionEstimator()
    for _ in range(8):  # a warm server: cycles of 20 tokens keeping 5
        est.cycles.observe(20, 15)
    return est


def request(max_new_tokens: int, **options) -> tuple[SimpleNamespace, MementoSequence]:
    seq = MementoSequence(spec(mask_delimiters=False, **options), tokens("A"))
    return SimpleNamespace(sampling_params=SimpleNamespace(max_new_tokens=max_new_tokens), output_ids=[]), seq


def test_the_clip_is_the_estimate_inside_the_scope_only(estimator):
    req, seq = request(400)
    with admission.estimate_scope(estimator, req, seq) as growth:
        assert growth.total == 20 + 95  # the open cycle, then a quarter of the rest
        assert growth.total == schedule_policy.CLIP_MAX_NEW_TOKENS
        with admission.stock_clip():  # a running request looked at inside the scope
            assert schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK
        assert growth.total == schedule_policy.CLIP_MAX_NEW_TOKENS
    assert schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK


def test_running_reservation_is_the_bound_or_sglangs_figure(estimator):
    req, seq = request(400)
    assert admission.running_reservation(estimator, 280.0, req, seq) == 115
    plain, _ = request(400)
    assert admission.running_reservation(estimator, 280.0, plain, None) == 280.0
    off, off_seq = request(400, compact_on_summary_end=False)
    assert admission.running_reservation(estimator, 280.0, off, off_seq) == 280.0


def test_the_estimate_never_exceeds_sglangs(estimator):
    req, seq = request(10)
    assert estimator.growth(req, seq).total <= 10


def test_a_cold_server_keeps_sglangs_estimate():
    req, seq = request(400)
    with admission.estimate_scope(admission.AdmissionEstimator(), req, seq) as growth:
        assert growth is None and schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK


def test_a_priority_preemption_keeps_the_learned_bounds(estimator):
    """A retraction for memory of a row admitted on the bound backs off to the worst cycles
    seen; a priority preemption (bounds held) is no failed bound and changes nothing."""
    rt = MementoRuntime(admission=estimator)
    req, seq = request(400)
    seq.note_admission(115)
    before = estimator.cycles.bounds()
    with rt.releases.for_memory(), rt.releases.holding_bounds():
        rt.on_retraction(seq)
    assert estimator.cycles.bounds() == before and not estimator.cycles.cautious
    rt.on_retraction(seq)  # not releasing for memory (new weights, an abort): no back-off
    assert not estimator.cycles.cautious
    with rt.releases.for_memory():
        rt.on_retraction(seq)
    assert estimator.cycles.cautious


def test_a_lost_bet_backs_off_whichever_row_sglang_retracts(estimator):
    """SGLang picks the row to retract itself: a plain request, or a Memento one admitted
    before anything was learned. If the running batch was reserved on a bet, any
    retraction for memory ends the bet."""
    rt = MementoRuntime(admission=estimator)
    estimator.betting = True
    with rt.releases.for_memory():
        rt.on_retraction(None)  # a plain request
    assert estimator.cycles.cautious and not estimator.betting
    assert estimator.cycles.bounds().in_flight is None  # no expectations while cautious


def test_the_stock_clip_keeps_the_expectation(estimator):
    req, seq = request(STOCK * 10)
    growth = estimator.growth(req, seq)
    assert growth.total == STOCK and growth.expected_open is not None and growth.expected_rest > 0
