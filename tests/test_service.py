"""The app's side of generation and scoring: the request's checks and time budget, inductor's
cache, torch's thread count, which checkpoints compile in the background, the explorer's
compiled scoring. (Batch buckets and the compiled decoding step itself are model.generate's,
tested in test_model.py.)"""

import math
import os
import re

import numpy as np
import pytest
import torch

import adapters
import model.compress as mbz
from adapters.checkpoints import catalog
from app import service
from model import GenerationStatus, MegaByteConfig, Sampling, build_model, save_checkpoint, stream_bytes
from model.best_of import chunked_best_of


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
    assert made == service.collect(stream_bytes(service.decoder(model), b"abc", 30, 3, how, seed=2))
    assert status.path == "eager, torch's layers, sampling in torch, float32" and status.bytes_per_second > 0


def test_steered_continuation_steers_each_sample_a_chunk_at_a_time():
    model, layout = tiny(), adapters.Layout("audio", sample_rate=8000)
    prompt = adapters.audio.encode(0.3 * np.sin(np.arange(400) * 0.3), layout)
    steering = adapters.audio.Steering(candidates=4, untruncated=2, seconds=0.001)  # 8 bytes a chunk
    how, status = Sampling(min_p=0.1), GenerationStatus()
    parts = list(service.continue_bytes(model, prompt, 20, 2, how, 5, status, steering, layout))
    chunks = [part.shape for part in parts if part.size]  # the rest: (2, 0) while a chunk is drawn
    assert chunks == [(2, 8), (2, 8), (2, 4)]  # the samples in step, a chunk at a time
    for sample, made in enumerate(service.collect(parts)):
        assert made == b"".join(chunked_best_of(model, prompt, 20, *steering.plan(prompt, layout, how), 5 + sample))
    assert status.path == "eager, torch's layers, sampling in torch, float32" and status.bytes_per_second > 0
    assert (service.rule_words(how, steering) == "min_p 0.1, steered best of 4 per 0.001 s, 2 from every byte "
                                                 "(4 candidates drawn for each byte kept)")
    assert service.rule_words(how, None) == "min_p 0.1"


def test_work_past_its_budget_is_stopped_with_one_sentence(monkeypatch):
    model, data = tiny(), bytes(range(256)) * 4
    monkeypatch.setattr(service, "BUDGET_START_SECONDS", 0)
    for speed in ("SCORE_BYTES_PER_SECOND", "CODING_BYTES_PER_SECOND", "GENERATE_BYTES_PER_SECOND"):
        monkeypatch.setattr(service, speed, math.inf)  # every budget 0 s: past it at the first check
    generation = service.continue_bytes(model, b"ab", 100, 3, Sampling())
    requests = [("Scoring 1,024 bytes", lambda: service.score_bytes(model, data)),
                ("Scoring 1,024 bytes", lambda: service.score_bytes(model, data, adapt=True)),
                ("Generating 300 bytes", lambda: service.collect(generation))]
    for doing, request in requests:
        with pytest.raises(service.UserError) as stopped:
            request()
        assert str(stopped.value) == (f"{doing} ran past its time budget of 0 s and was stopped; the server may be "
                                      "busy: try again later, or with less.")


def test_coding_leaves_torchs_thread_count_alone(tiny_checkpoints, monkeypatch):
    """The app sets torch's threads once, to the coder's; a request that set them would set them
    for every request running beside it."""
    folder, data = tiny_checkpoints / "text", b"the same few words again and again " * 30
    threads = torch.get_num_threads()
    torch.set_num_threads(mbz.THREADS)  # as the app's start-up does
    try:
        with monkeypatch.context() as patch:
            changed = []
            patch.setattr(torch, "set_num_threads", changed.append)
            blob = service.compress_bytes(data, "text", folder, adapt=True)
            assert service.decompress(blob, folder).data == data
            service.score_bytes(service.load(folder)[0], data, adapt=True)
        assert changed == []
    finally:
        torch.set_num_threads(threads)


def test_the_compile_cache_is_chosen_at_start_up_not_by_the_compile_thread(monkeypatch):
    cache_dirs = []
    monkeypatch.setattr(service.Decoder, "compile",
                        lambda decoder, buckets: cache_dirs.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR")))
    # unset; set first, so that teardown also undoes what use_compile_cache sets
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset by the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    service.compile_now(tiny(), (2,))
    assert cache_dirs == [None]  # the environment is left alone
    service.use_compile_cache()
    service.compile_now(tiny(), (2,))
    assert cache_dirs[-1] == str(service.COMPILE_CACHE / "inductor")


def test_background_work_readies_every_fused_decoder_first_then_compiles_audio_at_steering_s_batch_and_images_at_every_bucket(
        tiny_checkpoints, monkeypatch):
    done = []
    monkeypatch.setattr(service, "fast_decoder_now", lambda model: done.append((model, "fused")))
    monkeypatch.setattr(service, "compile_now", lambda model, buckets: done.append((model, buckets)))
    monkeypatch.setattr(service, "compile_scoring_now", lambda model: done.append((model, "scoring")))
    service.compile_in_background(tiny_checkpoints).join()
    audio, emoji, image, text = (service.load(tiny_checkpoints / name)[0] for name in ("audio", "emoji", "image", "text"))
    assert done == [(audio, "fused"), (emoji, "fused"), (image, "fused"),
                    (audio, (8,)), *((model, (bucket,)) for bucket in (1, 2, 4, 8) for model in (emoji, image)),
                    (text, "scoring"), (audio, "scoring"), (audio, (1,))]


def test_requests_take_the_fast_decoder_as_soon_as_it_is_made_before_anything_compiles():
    model = tiny()
    assert service.decoder(model).describe().startswith("eager, torch's layers")  # nothing made yet
    fast = service.fast_decoder_now(model)
    assert service.decoder(model) is fast and not fast.steps  # eager, on the fused step where it builds
    assert service.decoder(model).describe() == fast.describe()


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


def test_auto_ranks_the_checkpoints_of_a_medium_by_how_surprised_they_are(tmp_path):
    for name, favourite in (("zeros", 0), ("ones", 1)):
        model = tiny()
        with torch.no_grad():  # a model sure of one byte whatever it reads
            model.head.weight.zero_()
            model.head.bias.fill_(-30.0)
            model.head.bias[favourite] = 30.0
        save_checkpoint(tmp_path / name, model, {"modality": "text"}, card=f"# always {name}\n")
    choice = service.choose_checkpoint(bytes(100), "text", catalog(tmp_path, "text"))
    fits = choice.fits
    assert [fit.folder.name for fit in fits] == ["zeros", "ones"] and choice.folder.name == "zeros"
    assert fits[0].bits_per_byte < 0.01 and fits[1].bits_per_byte > 50
    assert choice.data == bytes(100) and 0 < choice.seconds < 60
    assert re.fullmatch(r"zeros 0\.00 · ones \d+\.\d\d bits per byte: scored with zeros \(chosen in \d+\.\d s\)",
                        choice.summary("scored"))
    with pytest.raises(service.UserError, match="There is no audio checkpoint"):
        service.choose_checkpoint(bytes(100), "audio", catalog(tmp_path, "audio"))


def test_auto_decodes_an_upload_once_for_every_checkpoint(tiny_checkpoints, monkeypatch):
    decoded = []
    opened = adapters.image._open
    monkeypatch.setattr(adapters.image, "_open", lambda *args: decoded.append(1) or opened(*args))
    photo = service.ROOT / "assets/images/chelsea.png"
    choice = service.choose_checkpoint(photo, "image", catalog(tiny_checkpoints, "image"))
    assert len(decoded) == 1 and {fit.folder.name for fit in choice.fits} == {"image", "emoji"}
    assert choice.data == service.encode_file(photo, service.load(choice.folder)[1])
    clip = service.ROOT / "assets/audio/guit_em9.flac"
    choice = service.choose_checkpoint(clip, "audio", catalog(tiny_checkpoints, "audio"), max_audio_seconds=0.5)
    assert choice.folder.name == "audio" and len(choice.data) == 4000
