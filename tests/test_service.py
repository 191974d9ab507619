"""The app's side of generation and scoring: the request's checks, inductor's cache, which
checkpoints compile in the background, the explorer's compiled scoring. (Batch buckets and
the compiled decoding step itself are model.generate's, tested in test_model.py.)"""

import os

import numpy as np
import pytest
import torch

from app import service
from model import GenerationStatus, MegaByteConfig, Sampling, build_model, stream_bytes


def tiny():
    torch.manual_seed(0)
    config = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=1, global_heads=1, local_dim=16,
                            local_layers=1, local_heads=1, max_bytes=64)
    return build_model(config).eval()


def test_continue_bytes_checks_the_request_then_streams_as_the_model_does():
    model = tiny()
    for new_bytes, samples, sentence in ((0, 1, "Ask for at least one new byte."),
                                         (10, 0, "The number of samples must be between 1 and 8."),
                                         (10, 9, "The number of samples must be between 1 and 8.")):
        with pytest.raises(service.UserError) as refused:
            service.collect(service.continue_bytes(model, b"abc", new_bytes, samples, Sampling()))
        assert str(refused.value) == sentence
    how, status = Sampling(temperature=0.9, top_k=50), GenerationStatus()
    made = service.collect(service.continue_bytes(model, b"abc", 30, 3, how, seed=2, status=status))
    assert made == service.collect(stream_bytes(model, b"abc", 30, 3, how, seed=2))
    assert status.path == "eager" and status.bytes_per_second > 0


def test_compile_now_keeps_inductors_code_in_the_app_cache(monkeypatch):
    cache_dirs = []
    monkeypatch.setattr(service, "compile_for_buckets",
                        lambda model, buckets: cache_dirs.append((os.environ.get("TORCHINDUCTOR_CACHE_DIR"), buckets)))
    # unset for compile_now; set first, so that teardown also undoes what compile_now sets
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset by the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    service.compile_now(tiny(), (2,))
    assert cache_dirs == [(str(service.COMPILE_CACHE / "inductor"), (2,))]


def test_background_compile_takes_audio_at_batch_1_and_images_at_every_bucket(tiny_checkpoints, monkeypatch):
    compiled = []
    monkeypatch.setattr(service, "compile_now", lambda model, buckets: compiled.append((model, buckets)))
    monkeypatch.setattr(service, "compile_scoring_now", lambda model: compiled.append((model, "scoring")))
    service.compile_in_background(tiny_checkpoints).join()
    audio, emoji, image, text = (service.load(tiny_checkpoints / name)[0] for name in ("audio", "emoji", "image", "text"))
    assert compiled == [(audio, (1,)), *((model, (bucket,)) for bucket in (1, 2, 4, 8) for model in (emoji, image)),
                        (text, "scoring"), (audio, "scoring")]


def test_once_its_scoring_is_compiled_the_explorer_scores_full_batches_with_it(monkeypatch):
    model, calls = tiny(), []

    def compile_scoring(model, dtype):
        def forward(rows, predict_from):
            calls.append(rows.shape)
            return model(rows, predict_from=predict_from)
        return forward

    monkeypatch.setattr(service, "compile_scoring", compile_scoring)
    monkeypatch.setattr(service, "bf16_faster", lambda device: False)  # fp32 both ways: the same bits
    data = bytes(np.random.default_rng(0).integers(0, 256, 40 * model.context, dtype=np.uint8))
    eager = service.score_bytes(model, data).scores.surprisal
    assert not calls
    service.compile_scoring_now(model)
    warm_up = len(calls)
    assert warm_up == 2  # the first window's batch and a later one
    np.testing.assert_array_equal(service.score_bytes(model, data).scores.surprisal, eager)
    assert len(calls) > warm_up and set(calls) == {(service.SCORE_BATCH, model.context)}
