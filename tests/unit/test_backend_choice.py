"""Which prefill attention backend a Memento server gets, before SGLang picks one."""

from __future__ import annotations

import json

import pytest

from memento_sglang.sglang_plugin import settings

ON = json.dumps({"enable": True, "mask_delimiters": False})


def test_memento_off_leaves_the_choice_to_sglang(monkeypatch):
    monkeypatch.delenv("MEMENTO_SGLANG_CONFIG", raising=False)
    assert settings.masking_backend_choice(None, {"attention_backend": "fa3"}, "cuda") == {}


@pytest.mark.parametrize("backend", ["fa3", "trtllm_mha", "flex_attention"])
def test_forced_prefill_backend_without_masks_is_refused(backend, monkeypatch):
    monkeypatch.setattr(settings, "gpu_available", lambda: True)
    with pytest.raises(settings.MementoStartupError, match=f"'{backend}' attention backend"):
        settings.masking_backend_choice(ON, {"prefill_attention_backend": backend}, "cuda")


@pytest.mark.parametrize("backend", ["fa3", "trtllm_mha", "fa4"])
def test_a_decode_backend_without_masks_is_kept_with_a_masking_prefill(backend, monkeypatch):
    """Decode never needs a mask (rows are compacted first): the user's fast decode backend
    stays, only prefill moves to FlashInfer."""
    monkeypatch.setattr(settings, "gpu_available", lambda: True)
    choice = settings.masking_backend_choice(ON, {"attention_backend": backend}, "cuda")
    assert choice == {"prefill_attention_backend": "flashinfer"}


def test_on_rocm_both_phases_run_on_triton(monkeypatch):
    """ROCm's decode default (aiter) is untested with Memento: Triton stays for decode too."""
    import torch

    monkeypatch.setattr(settings, "gpu_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert settings.masking_backend_choice(ON, {}, None) == {"attention_backend": "triton"}
    forced = settings.masking_backend_choice(ON, {"attention_backend": "aiter"}, None)
    assert forced == {"prefill_attention_backend": "triton"}


def test_without_a_gpu_a_backend_without_masks_is_refused(monkeypatch):
    monkeypatch.setattr(settings, "gpu_available", lambda: False)
    with pytest.raises(settings.MementoStartupError, match="'intel_amx' attention backend"):
        settings.masking_backend_choice(ON, {"attention_backend": "intel_amx"}, "cpu")


@pytest.mark.parametrize("backend", settings.MASKING_BACKENDS)
def test_masking_backends_are_kept(backend):
    assert settings.masking_backend_choice(ON, {"attention_backend": backend}, None) == {}


def test_prefill_backend_decides_over_the_general_one():
    choice = {"attention_backend": "fa3", "prefill_attention_backend": "flashinfer"}
    assert settings.masking_backend_choice(ON, choice, "cuda") == {}


def test_unset_backend_on_gpu_masks_prefill_only(monkeypatch):
    """SGLang then picks its default decode backend for the GPU (FA3 on Hopper, trtllm_mha
    on Blackwell)."""
    monkeypatch.setattr(settings, "gpu_available", lambda: True)
    assert settings.masking_backend_choice(ON, {}, None) == {"prefill_attention_backend": "flashinfer"}
    monkeypatch.setattr(settings, "gpu_available", lambda: False)
    assert settings.masking_backend_choice(ON, {}, None) == {}
    assert settings.masking_backend_choice(ON, {}, "cpu") == {}


def test_the_memento_radix_cache_follows_the_config_wherever_it_comes_from(monkeypatch):
    """The flag or the environment variable picks the Memento radix cache (SGLang's default
    tree is refused with Memento); an explicit cache choice wins; no config, no choice."""
    none = {"radix_cache_backend": None, "disable_radix_cache": False, "enable_hierarchical_cache": False}
    monkeypatch.delenv("MEMENTO_SGLANG_CONFIG", raising=False)
    assert settings.radix_cache_choice(None, none) == {}
    assert settings.radix_cache_choice(ON, none) == {"radix_cache_backend": "memento"}
    monkeypatch.setenv("MEMENTO_SGLANG_CONFIG", ON)
    assert settings.radix_cache_choice(None, none) == {"radix_cache_backend": "memento"}
    assert settings.radix_cache_choice(None, {**none, "disable_radix_cache": True}) == {}
