"""The admission seam: SGLang's clip is the request's estimate only inside its own scope."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sglang.srt.managers import schedule_policy
from support.synthetic import spec, tokens

from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin import admission

STOCK = schedule_policy.CLIP_MAX_NEW_TOKENS


@pytest.fixture
def estimator(monkeypatch):
    est = admission.AdmissionEstimator()
    monkeypatch.setattr(admission, "_estimator", est)
    for _ in range(8):  # a warm server: cycles of 20 tokens keeping 5
        est.cycles.observe(20, 15)
    return est


def request(max_new_tokens: int, **options) -> tuple[SimpleNamespace, MementoSequence]:
    seq = MementoSequence(spec(mask_delimiters=False, **options), tokens("A"))
    return SimpleNamespace(sampling_params=SimpleNamespace(max_new_tokens=max_new_tokens), output_ids=[]), seq


def test_the_clip_is_the_estimate_inside_the_scope_only(estimator):
    req, seq = request(400)
    with admission.estimate_scope(req, seq) as growth:
        assert growth.total == 20 + 95  # the open cycle, then a quarter of the rest
        assert growth.total == schedule_policy.CLIP_MAX_NEW_TOKENS
        with admission.stock_clip():  # a running request looked at inside the scope
            assert schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK
        assert growth.total == schedule_policy.CLIP_MAX_NEW_TOKENS
    assert schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK


def test_running_reservation_is_the_bound_or_sglangs_figure(estimator):
    req, seq = request(400)
    assert admission.running_reservation(280.0, req, seq) == 115
    plain, _ = request(400)
    assert admission.running_reservation(280.0, plain, None) == 280.0
    off, off_seq = request(400, compact_on_summary_end=False)
    assert admission.running_reservation(280.0, off, off_seq) == 280.0


def test_the_estimate_never_exceeds_sglangs(estimator):
    req, seq = request(10)
    assert admission.current().growth(req, seq).total <= 10


def test_a_cold_server_keeps_sglangs_estimate(monkeypatch):
    monkeypatch.setattr(admission, "_estimator", admission.AdmissionEstimator())
    req, seq = request(400)
    with admission.estimate_scope(req, seq) as growth:
        assert growth is None and schedule_policy.CLIP_MAX_NEW_TOKENS == STOCK


def test_a_priority_preemption_keeps_the_learned_bounds(estimator):
    """A retraction of a row admitted on the bound backs off to the worst cycles seen; a
    priority preemption (inside `bounds_held`) is no failed bound and changes nothing."""
    req, seq = request(400)
    seq.note_admission(115)
    before = estimator.cycles.bounds()
    with admission.bounds_held():
        admission.on_retraction(seq)
    assert estimator.cycles.bounds() == before and not estimator.cycles.cautious
    admission.on_retraction(seq)
    assert estimator.cycles.cautious
