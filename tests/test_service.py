"""The generation part of the app's service: batch buckets, the eager path until the compiled
step is ready, the compiled one after, and which checkpoints compile in the background."""

import numpy as np
import pytest
import torch

from app import service
from model import MegaByteConfig, Sampling, build_model, generate


def tiny():
    torch.manual_seed(0)
    config = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=1, global_heads=1, local_dim=16,
                            local_layers=1, local_heads=1, max_bytes=64)
    return build_model(config).eval()


def test_samples_are_padded_to_their_bucket_and_the_status_says_eager():
    model = tiny()
    status = service.GenerationStatus()
    made = service.collect(service.continue_bytes(model, b"abc", 30, 3, Sampling(), seed=2, status=status))
    assert made == generate(model, b"abc", 30, 4, seed=2)[:3]
    assert status.path == "eager" and status.bytes_per_second > 0


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


@pytest.mark.slow
def test_once_compiled_requests_take_the_compiled_step_and_get_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(service, "decoding_dtype", lambda model, batch: torch.float32)  # bf16 would change bytes
    model = tiny()
    greedy = Sampling(temperature=0)
    eager = service.collect(service.continue_bytes(model, b"abc", 30, 2, greedy))
    service.compile_now(model, (2,))
    status = service.GenerationStatus()
    assert service.collect(service.continue_bytes(model, b"abc", 30, 2, greedy, status=status)) == eager
    assert status.path == "compiled"
