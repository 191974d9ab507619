import itertools
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import (
    CheckpointError, ConfigError, Decoder, FlatConfig, GenerationStatus, MegaByteConfig, Sampling, bucket_for,
    build_model, config_from_dict, generate, generate_stream, load_checkpoint, next_byte_loss, save_checkpoint,
    score, stream_bytes,
)
from model import fused_step
from model.layers import Transformer
from model.sampling import sample
from model.score import window_plan

ROOT = Path(__file__).resolve().parent.parent

TINY = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=2, global_heads=2,
                      local_dim=16, local_layers=2, local_heads=2, max_bytes=64)
TINY_FLAT = FlatConfig(dim=32, layers=2, heads=2, max_bytes=64)


# Rotary positions over patches and a within-patch table (long-context checkpoints)
ROTARY = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=2, global_heads=2,
                        local_dim=16, local_layers=2, local_heads=2, max_bytes=64, positions="rotary")


# Odd widths: matrices whose row counts are not multiples of the fused step's blocks of four
ODD = MegaByteConfig(patch_size=4, byte_dim=6, global_layers=1, global_heads=3,
                     local_dim=18, local_layers=1, local_heads=2, max_bytes=64)


@pytest.fixture(params=[False, True], ids=["torch", "fused"])
def fused(request):
    """Cached decoding through torch's layers, or through the fused C++ step (model.fused_step).
    With CXX=false (test_without_a_compiler_decoding_falls_back_to_torchs_layers) it cannot build."""
    if request.param and not fused_step.build():
        if os.environ.get("CXX") == "false":
            pytest.skip("CXX=false: the fused step cannot be built")
        pytest.fail("the fused decoding step did not build")
    return request.param


def tiny(config=TINY, seed=0):
    torch.manual_seed(seed)
    return build_model(config).eval()


def collect(parts) -> list[bytes]:
    """The rows of streamed parts (samples, m), joined, as bytes."""
    return [row.tobytes() for row in np.concatenate(list(parts), 1)]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["megabyte", "flat"]))
def test_changing_a_byte_never_changes_earlier_predictions(data, kind):
    model = tiny(TINY if kind == "megabyte" else TINY_FLAT)
    x = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 255), min_size=32, max_size=32),
                                        min_size=2, max_size=2)))
    row = data.draw(st.integers(0, 1))
    t = data.draw(st.integers(0, 31))
    changed = x.clone()
    changed[row, t] = (x[row, t] + data.draw(st.integers(1, 255))) % 256
    with torch.no_grad():
        before, after = model(x), model(changed)
    assert torch.equal(before[1 - row], after[1 - row])  # other batch rows are untouched
    assert torch.allclose(before[row, : t + 1], after[row, : t + 1], atol=1e-6)
    if t < 31:
        assert not torch.allclose(before[row, t + 1 :], after[row, t + 1 :])


@pytest.mark.parametrize("config", [TINY, TINY_FLAT, ODD, ROTARY], ids=["megabyte", "flat", "odd", "rotary"])
@pytest.mark.parametrize("prompt_len", [0, 1, 4, 6, 8, 11])
def test_cached_decoding_matches_full_forward(config, prompt_len, fused):
    model = tiny(config)
    x = torch.randint(0, 256, (3, 48))
    with torch.no_grad():
        full = model(x)
        logits, state = model.prefill(x[:, :prompt_len], fused)
        got = [logits]
        for t in range(prompt_len, 47):
            logits, state = model.decode_one(x[:, t], state, fused)
            got.append(logits)
    cached = torch.stack(got, 1)
    assert (cached - full[:, prompt_len:]).abs().max() <= 1e-4


@pytest.mark.parametrize("config", [TINY, TINY_FLAT, ROTARY], ids=["megabyte", "flat", "rotary"])
def test_predicting_from_a_later_byte_gives_the_same_logits(config):
    model = tiny(config)
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)
        for first in (0, 8, 16, 28):
            assert torch.allclose(model(x, predict_from=first), full[:, first:], atol=1e-6)


def test_byte_zero_counts_in_the_loss():
    model = tiny()
    x = torch.zeros(1, 32, dtype=torch.long)
    x[0, ::3] = 7
    logits = model(x)
    manual = -logits.log_softmax(-1).gather(-1, x[..., None]).mean()
    assert torch.allclose(next_byte_loss(logits, x), manual)
    # raising the probability of byte 0 where byte 0 follows must lower the loss
    boosted = logits.detach().clone()
    boosted[x == 0, 0] += 5.0
    assert next_byte_loss(boosted, x) < next_byte_loss(logits.detach(), x)


def test_tiny_model_overfits_one_sequence():
    torch.manual_seed(0)
    config = MegaByteConfig(patch_size=8, byte_dim=16, global_layers=2, global_heads=2,
                            local_dim=64, local_layers=2, local_heads=2, max_bytes=512)
    model = build_model(config)
    x = torch.randint(0, 256, (1, 512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = next_byte_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() / math.log(2) < 0.05:
            break
    model.eval()
    with torch.no_grad():
        assert next_byte_loss(model(x), x).item() / math.log(2) < 0.1


def test_windowed_scoring_equals_single_passes_over_each_window():
    model = tiny()
    data = bytes(np.random.default_rng(0).integers(0, 256, 150, dtype=np.uint8))
    windowed = score(model, data, window=32, batch=3)
    for start, first, end in window_plan(len(data), 32):
        single = score(model, data[start:end])
        assert np.allclose(windowed.surprisal[first:end], single.surprisal[first - start :], atol=1e-5)
        assert np.allclose(windowed.entropy[first:end], single.entropy[first - start :], atol=1e-5)
    whole = score(model, data[:64])
    assert np.allclose(score(model, data[:64], window=64).surprisal, whole.surprisal)


def test_every_byte_after_the_first_window_sees_half_a_window():
    for n in [1, 31, 32, 33, 100, 1000]:
        plan = window_plan(n, 32)
        covered = np.zeros(n, int)
        for start, first, end in plan:
            covered[first:end] += 1
            assert start == 0 or first - start >= 16
            assert end - start <= 32
        assert (covered == 1).all()


def test_scores_are_probabilities():
    model = tiny()
    s = score(model, b"hello world, hello bytes", top=3)
    assert s.surprisal.shape == (24,) and (s.surprisal > 0).all()
    assert (s.entropy <= 8 + 1e-4).all()
    assert (s.top_probs[:, 0] >= s.top_probs[:, 1]).all()
    assert (s.top_probs.sum(1) <= 1 + 1e-5).all()


def test_same_seed_same_bytes_and_streaming_agrees():
    model = tiny()
    sampling = Sampling(temperature=0.9, top_k=50, top_p=0.95)
    a = generate(model, b"abc", 40, samples=3, sampling=sampling, seed=7)
    b = generate(model, b"abc", 40, samples=3, sampling=sampling, seed=7)
    c = generate(model, b"abc", 40, samples=3, sampling=sampling, seed=8)
    assert a == b and a != c and all(len(s) == 40 for s in a)
    streamed = np.concatenate(list(generate_stream(model, b"abc", 40, 3, sampling, seed=7)), 1)
    assert [row.tobytes() for row in streamed] == a


@pytest.mark.parametrize("config", [TINY, TINY_FLAT], ids=["megabyte", "flat"])
def test_one_model_serves_two_generations_at_once(config, fused):
    """The decoding state belongs to the request: two streams on one model, interleaved
    step by step or in two threads, give the bytes each gives alone."""
    model = tiny(config)
    requests = [(b"first prompt", 70, 1, 3), (b"xy", 90, 2, 4)]  # both pass the context of 64
    alone = [generate(model, prompt, n, samples, seed=seed, fused=fused) for prompt, n, samples, seed in requests]
    streams = [generate_stream(model, prompt, n, samples, seed=seed, fused=fused)
               for prompt, n, samples, seed in requests]
    interleaved = [[], []]
    for first, second in itertools.zip_longest(*streams):  # one step of each in turn
        for parts, part in zip(interleaved, (first, second)):
            if part is not None:
                parts.append(part)
    assert [collect(parts) for parts in interleaved] == alone
    with ThreadPoolExecutor(2) as pool:
        threaded = pool.map(lambda r: collect(generate_stream(model, r[0], r[1], r[2], seed=r[3], fused=fused)),
                            requests)
        assert list(threaded) == alone


@pytest.mark.parametrize("config", [TINY, ODD, ROTARY], ids=["tiny", "odd", "rotary"])
@pytest.mark.parametrize("dtype, tolerance, loud", [(torch.float32, 1e-4, False), (torch.bfloat16, 2e-2, False),
                                                    (torch.float32, 1e-4, True)], ids=["fp32", "bf16", "fp32-loud"])
def test_the_fused_step_writes_the_caches_torch_writes(config, dtype, tolerance, loud):
    """The C++ step against torch's layers on the same inputs: the logits and every
    cached key and value, for a batch of three, past a patch boundary. In bf16 the
    fused step rounds only what it stores, torch every intermediate: hence the tolerance.
    "loud" weights, 50× the initial ones, drive GELU's inputs far below zero, as trained
    models do (where a first version overflowed to NaN); in fp32, as bf16's rounding in
    torch's layers grows with such weights past any useful tolerance."""
    assert fused_step.build()
    model, x = tiny(config), torch.randint(0, 256, (3, 13))
    if loud:
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(50)
    model = model.to(dtype)
    results = {}
    for fused in (False, True):
        with torch.no_grad():
            logits, state = model.prefill(x[:, :5], fused)
            steps = [logits]
            for t in range(5, 13):
                logits, state = model.decode_one(x[:, t], state, fused)
                steps.append(logits)
        results[fused] = [torch.stack(steps)] + [t for pair in state.global_cache + state.local_cache for t in pair]
    for torch_made, fused_made in zip(results[False], results[True]):
        scale = torch_made.abs().max().clamp_min(1).item()
        torch.testing.assert_close(fused_made, torch_made, atol=tolerance * scale, rtol=tolerance)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_the_fused_step_attends_over_a_long_cache_as_torch_does(dtype, tolerance):
    """The C++ step against torch's layers over caches long enough for its attention to run on
    torch's threads, in the vector kernel for heads 64 and 16 wide and in the plain loop for 24:
    rotary positions, a batch of two, random keys and values at 0..332 and the new one at 333,
    the cache's last position, in a last block of 14. The same outputs and caches, within
    rounding, and the same floats on one thread as on two."""
    assert fused_step.build()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    for width, heads in [(128, 2), (64, 4), (48, 2)]:
        transformer = Transformer(width, 2, heads, 4, rotary=True).eval().to(dtype)
        cache = transformer.empty_cache(2, 334, dtype, "cpu")
        for keys, values in cache:
            keys.normal_()
            values.normal_()
        x, position = torch.randn(2, 1, width).to(dtype), torch.tensor([333])
        results = {}
        try:
            for how in ("torch", 1, 2):
                copied = [(keys.clone(), values.clone()) for keys, values in cache]
                with torch.no_grad():
                    if how == "torch":
                        out = transformer(x, copied, position)
                    else:
                        torch.set_num_threads(how)
                        out = fused_step.transformer_step(transformer, x, position, copied)
                results[how] = [out] + [t for pair in copied for t in pair]
        finally:
            torch.set_num_threads(threads)
        for torch_made, fused_made in zip(results["torch"], results[2]):
            scale = torch_made.abs().max().clamp_min(1).item()
            torch.testing.assert_close(fused_made, torch_made, atol=tolerance * scale, rtol=tolerance)
        assert all(torch.equal(one, two) for one, two in zip(results[1], results[2]))


@pytest.mark.parametrize("config", [TINY, ODD, ROTARY], ids=["tiny", "odd", "rotary"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_patch_drawn_in_one_cxx_call_is_the_patch_drawn_byte_by_byte(config, dtype):
    """model.fused_step.local_patch against the fused step's byte-by-byte path with torch's draws,
    from the same state and uniforms, three patches on: the same bytes, next logits and caches.
    In fp32 the local model's logits are the same floats either way. In bf16 the byte-by-byte
    path rounds them to bf16 before drawing, which moves the boundaries between bytes: there
    the model is greedy and loud (weights 50× the initial ones, so no two logits are near),
    and the logits and caches agree to bf16's rounding."""
    assert fused_step.build()
    model, x = tiny(config), torch.randint(0, 256, (3, 6))
    how = Sampling(temperature=0.9, top_p=0.95)
    if dtype == torch.bfloat16:
        how = Sampling(temperature=0)
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(50)
    model, uniform = model.to(dtype), torch.rand(3, model.patch_size)
    results = {}
    with torch.no_grad():
        for fused_sampling in (False, True):
            logits, state = model.prefill(x, fused=True)
            for _ in range(3):
                patch, logits, state = model.patch_step(logits, state, uniform, how.knobs("cpu"), True, fused_sampling)
            caches = [t for pair in state.global_cache + state.local_cache for t in pair]
            results[fused_sampling] = [patch, logits, *caches]
    assert torch.equal(results[True][0], results[False][0])
    for byte_by_byte, in_one_call in zip(results[False][1:], results[True][1:]):
        if dtype == torch.float32:
            assert torch.equal(in_one_call, byte_by_byte)
        else:
            scale = byte_by_byte.abs().max().clamp_min(1).item()
            torch.testing.assert_close(in_one_call, byte_by_byte, atol=2e-2 * scale, rtol=2e-2)


@pytest.mark.parametrize("config", [TINY, TINY_FLAT, ROTARY], ids=["megabyte", "flat", "rotary"])
def test_greedy_generation_follows_the_full_forward_pass_past_the_context(config, fused):
    model = tiny(config)
    prompt = b"xyz!!"
    out = generate(model, prompt, 150, sampling=Sampling(temperature=0), fused=fused)[0]
    sequence = list(prompt)
    keep = model.context // 2
    window = list(prompt)
    for byte in out:  # recompute each step from scratch, sliding exactly as documented
        if len(window) >= model.context:
            window = window[-keep:]
        with torch.no_grad():
            pad = (-(len(window) + 1)) % model.patch_size
            logits = model(torch.tensor([window + [0] * (pad + 1)]))[0, len(window)]
        assert logits.argmax().item() == byte
        window.append(byte)
        sequence.append(byte)


def test_sampling_follows_the_distribution_and_keeps_only_allowed_bytes():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * 252)
    logits = probs.clamp_min(1e-12).log().expand(40_000, -1)
    uniform = torch.rand(40_000, generator=torch.Generator().manual_seed(0))

    def frequencies(**how):
        return torch.bincount(sample(logits, Sampling(**how).knobs("cpu"), uniform), minlength=256)[:5] / 40_000

    assert torch.allclose(frequencies(), torch.tensor([0.5, 0.3, 0.15, 0.05, 0]), atol=0.01)
    assert torch.allclose(frequencies(top_k=2), torch.tensor([0.625, 0.375, 0, 0, 0]), atol=0.01)
    assert torch.allclose(frequencies(top_p=0.7), torch.tensor([0.625, 0.375, 0, 0, 0]), atol=0.01)
    assert torch.allclose(frequencies(top_p=0.85), torch.tensor([0.5, 0.3, 0.15, 0, 0]) / 0.95, atol=0.01)
    assert frequencies(temperature=0)[0] == 1
    sharp = frequencies(temperature=0.5)  # p^2, renormalised
    assert torch.allclose(sharp[:4], probs[:4] ** 2 / (probs[:4] ** 2).sum(), atol=0.01)


def test_top_k_one_is_greedy():
    model = tiny()
    greedy = generate(model, b"q", 20, sampling=Sampling(temperature=0))
    assert generate(model, b"q", 20, sampling=Sampling(temperature=1.0, top_k=1), seed=3) == greedy


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path / "ck", model, {"modality": "text"}, card="# card\n")
    loaded, layout = load_checkpoint(tmp_path / "ck")
    assert layout == {"modality": "text"}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left


def one_line_error(fn):
    with pytest.raises(CheckpointError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_bad_checkpoints_give_one_clear_sentence(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", tiny())
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    assert "corrupt or truncated" in one_line_error(lambda: load_checkpoint(folder))
    weights.write_bytes(b"not a safetensors file at all" * 10)
    assert "corrupt or truncated" in one_line_error(lambda: load_checkpoint(folder))
    weights.write_bytes(good)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["local_dim"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    assert "shape" in one_line_error(lambda: load_checkpoint(folder))
    config["model"]["local_layers"] = 1
    config["model"]["local_dim"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    assert "does not know" in one_line_error(lambda: load_checkpoint(folder))
    (folder / "config.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(lambda: load_checkpoint(folder))
    assert "no such directory" in one_line_error(lambda: load_checkpoint(tmp_path / "nowhere"))


@pytest.mark.parametrize("fields, words", [
    ({"max_bytes": 102}, "multiple of patch_size"),
    ({"global_heads": 3}, "does not divide"),
    ({"local_heads": 5}, "does not divide"),
    ({"patch_size": 0}, "positive integer"),
    ({"flavour": 1}, "unknown"),
    ({"positions": "absolute"}, "positions must be one of learned, rotary"),
    ({"positions": "rotary", "byte_dim": 6, "global_heads": 8}, "even width per global head"),
])
def test_config_mistakes_give_one_sentence(fields, words):
    with pytest.raises(ConfigError, match=words):
        config_from_dict({**TINY.to_dict(), **fields})


def test_rotary_positions_cost_no_parameters_per_byte_of_context():
    short, long = (build_model(config_from_dict({**ROTARY.to_dict(), "max_bytes": n})) for n in (64, 65536))
    assert sum(p.numel() for p in short.parameters()) == sum(p.numel() for p in long.parameters())
    assert long.position_embed.weight.shape == (ROTARY.patch_size, ROTARY.byte_dim)


def test_shipped_checkpoints_load_with_learned_positions_and_score_as_before():
    """config.json files written before the positions field load as the paper's learned table;
    the text checkpoint's neural model scores the first 6,000 bytes of Genesis as it did before
    rotary existed (its recall, turned on since, is model.recall's, tested there)."""
    model, _ = load_checkpoint("checkpoints/text")
    assert model.config.positions == "learned" and model.position_embed.weight.shape == (2048, 32)
    with open("assets/text/genesis.txt", "rb") as f:
        assert score(model, f.read()[:6000], recall=False).bits_per_byte == pytest.approx(1.7629844, abs=1e-6)


def test_configs_round_trip_through_json():
    for config in (TINY, TINY_FLAT, ROTARY):
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY, TINY_FLAT], ids=["megabyte", "flat"])
def test_compiled_decoding_gives_the_same_bytes(config):
    from model import compile_decoding

    model, other = tiny(config), tiny(config, seed=1)  # same shapes, other weights
    step, other_step = compile_decoding(model), compile_decoding(other)
    # the second setting reuses the compiled step: the settings are a tensor, not constants
    for sampling in (Sampling(temperature=0.8, top_k=20), Sampling(temperature=0)):
        eager = generate(model, b"compile me", 40, samples=2, sampling=sampling, seed=5)
        assert generate(model, b"compile me", 40, samples=2, sampling=sampling, seed=5, patch_step=step) == eager
    # each compiled step reads its own model's weights, though the two share the compiled code
    greedy = Sampling(temperature=0)
    assert (generate(other, b"compile me", 40, 2, greedy, patch_step=other_step)
            == generate(other, b"compile me", 40, 2, greedy))


def test_samples_are_padded_to_their_bucket_and_the_status_says_eager():
    assert [bucket_for(samples) for samples in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError):
        bucket_for(9)
    model, status = tiny(), GenerationStatus()
    made = collect(stream_bytes(Decoder(model, fused=False), b"abc", 30, 3, Sampling(), seed=2, status=status))
    assert made == generate(model, b"abc", 30, 4, seed=2)[:3]
    assert status.path == "eager, torch's layers, sampling in torch, float32" and status.bytes_per_second > 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_same_decoder_and_seed_give_the_same_bytes_compiled_or_not(dtype, fused):
    if dtype == torch.bfloat16 and not fused:
        pytest.skip("bf16 on torch's layers: inductor keeps intermediates in fp32 that eager rounds (Decoder's docstring)")
    decoder = Decoder(tiny(), dtype, fused)
    assert next(decoder.model.parameters()).dtype == dtype
    how = Sampling(temperature=0.9, top_k=40)
    eager = collect(stream_bytes(decoder, b"abc", 30, 2, how, seed=7))
    assert collect(stream_bytes(decoder, b"abc", 30, 2, how, seed=7)) == eager
    decoder.compile((2,))
    status = GenerationStatus()
    assert collect(stream_bytes(decoder, b"abc", 30, 2, how, seed=7, status=status)) == eager
    name = str(dtype).removeprefix("torch.")
    path = f"fused C++ step, sampling in C++, {name}" if fused else f"torch's layers, sampling in torch, {name}"
    assert status.path == f"compiled, {path}"
    assert decoder.describe(samples=8) == f"eager, {path}"
    if fused:  # a rule the C++ sampler lacks: drawn in torch, eagerly, and said so
        words = decoder.describe(2, Sampling(eta=0.1))
        assert words == f"eager, fused C++ step, sampling in torch (eta not in C++), {name}"
        status = GenerationStatus()
        collect(stream_bytes(decoder, b"abc", 30, 2, Sampling(eta=0.1), seed=7, status=status))
        assert status.path.startswith("eager")


@pytest.mark.slow
def test_without_a_compiler_decoding_falls_back_to_torchs_layers(tmp_path):
    """With no C++ compiler (CXX=false) and no build to load, the fused step does not build:
    Decoder.fastest says it runs torch's layers and gives their bytes, and the decoding tests
    pass on that path."""
    env = {**os.environ, "CXX": "false", "TORCH_EXTENSIONS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    check = """
import torch, warnings
from model import Decoder, Sampling, MegaByteConfig, build_model, generate, fused_step
warnings.simplefilter("ignore")
assert not fused_step.build()
torch.manual_seed(0)
model = build_model(MegaByteConfig(patch_size=4, byte_dim=8, global_heads=2, local_dim=16, local_heads=2,
                                   max_bytes=64)).eval()
decoder = Decoder.fastest(model)
assert not decoder.fused and "torch's layers" in decoder.describe(), decoder.describe()
how = Sampling(temperature=0.9)
fallback = generate(decoder.model, b"abc", 90, 2, how, seed=3, fused=decoder.fused)
assert fallback == generate(decoder.model, b"abc", 90, 2, how, seed=3, fused=False)
"""
    done = subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_model.py",
                            "-k", "cached_decoding or two_generations or greedy_generation"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout[-2000:]
    assert "skipped" in tests.stdout  # the fused half of each, which cannot run here


def test_the_entropy_patcher_cuts_where_entropy_is_high_or_jumps():
    from model.patches import entropy_boundaries, patch_sizes, threshold_for_mean_size
    entropy = np.array([5.0, 1.0, 0.5, 4.0, 3.9, 0.2, 0.3, 2.5])
    assert entropy_boundaries(entropy, threshold=3.0).tolist() == [0, 3, 4]
    assert entropy_boundaries(entropy, jump=2.0).tolist() == [0, 3, 7]
    assert entropy_boundaries(entropy, threshold=3.0, jump=2.0).tolist() == [0, 3, 4, 7]
    assert patch_sizes(np.array([0, 3, 4, 7]), 8).tolist() == [3, 1, 3, 1]
    assert entropy_boundaries(np.zeros(0), threshold=1.0).tolist() == []
    noise = np.random.default_rng(0).random(80_000) * 8
    boundaries = entropy_boundaries(noise, threshold=threshold_for_mean_size(noise, 8))
    assert 7.5 < patch_sizes(boundaries, len(noise)).mean() < 8.5


def test_score_gives_the_compiled_forward_only_full_batches_of_whole_windows():
    model = tiny()
    shapes = []

    def compiled(rows, predict_from):
        shapes.append(tuple(rows.shape))
        return model(rows, predict_from=predict_from)

    data = bytes(np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8))
    plain = score(model, data, batch=4)
    routed = score(model, data, batch=4, compiled=compiled)
    assert shapes and set(shapes) == {(4, 64)}
    assert len(window_plan(len(data), 64)) > 4 * len(shapes)  # a partial batch went eagerly
    np.testing.assert_array_equal(routed.surprisal, plain.surprisal)
    calls = len(shapes)
    score(model, data[:40], batch=4, compiled=compiled)  # shorter than a window: eager
    assert len(shapes) == calls


def test_strided_scoring_takes_each_byte_from_the_second_half_of_a_patch():
    from model.score import strided_score
    model = tiny()  # P = 4
    data = bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8))
    plain, shifted = score(model, data), score(model, data[2:])
    strided = strided_score(model, data, top=2)
    for i in range(len(data)):
        expected = shifted.surprisal[i - 2] if i % 4 < 2 and i >= 2 else plain.surprisal[i]
        assert strided.surprisal[i] == pytest.approx(expected)
    assert strided.top_bytes.shape == (300, 2)
    assert strided_score(model, b"a").surprisal.shape == (1,)
