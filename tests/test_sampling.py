import json
from dataclasses import replace
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chisquare

from model import MegaByteConfig, Sampling, build_model, generate
from model.generate import Steer, generate_stream
from adapters import Layout, audio
from model.best_of import best_of, badness, chunked_best_of, continuation_scores
from model import fused_step
from model.sampling import PerSample, ranked_cdf, rules_outside_cxx, sample

DRAWS = 40_000
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * 252)
TINY = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=2, global_heads=2,
                      local_dim=16, local_layers=2, local_heads=2, max_bytes=64)


def draws(probs: torch.Tensor, **how) -> torch.Tensor:
    """DRAWS bytes from one distribution, with fixed noise."""
    logits = probs.clamp_min(1e-12).log().expand(DRAWS, -1)
    uniform = torch.rand(DRAWS, generator=torch.Generator().manual_seed(0))
    return sample(logits, Sampling(**how).knobs("cpu"), uniform)


def assert_follows(drawn: torch.Tensor, expected: torch.Tensor):
    """Only bytes of positive expected probability are drawn, in proportions a chi-square test accepts."""
    counts = torch.bincount(drawn, minlength=256).double()
    expected = torch.cat([expected, torch.zeros(256 - len(expected))]).double()
    allowed = expected > 0
    assert counts[~allowed].sum() == 0
    assert chisquare(counts[allowed].numpy(), (expected[allowed] / expected.sum() * DRAWS).numpy()).pvalue > 0.001


CXX_RULES = [Sampling(), Sampling(temperature=0), Sampling(temperature=0.7, top_k=40), Sampling(top_p=0.9),
             Sampling(min_p=0.1), Sampling(temperature=1.3, top_k=5, top_p=0.5, min_p=0.05)]
ROWS = 300


def cxx_sampler():
    if not fused_step.build():
        if os.environ.get("CXX") == "false":
            pytest.skip("CXX=false: the fused step cannot be built")
        pytest.fail("the fused decoding step did not build")
    return fused_step.sample


@pytest.mark.parametrize("knobs", [rule.knobs("cpu") for rule in CXX_RULES]
                         + [PerSample(CXX_RULES * (ROWS // len(CXX_RULES))).knobs("cpu")],
                         ids=[rule.describe() for rule in CXX_RULES] + ["a rule per sample"])
def test_the_cxx_sampler_draws_the_bytes_torch_draws_from_the_same_uniforms(knobs):
    """Uniforms just inside both ends and in the middle of every kept byte's share of torch's
    cumulative distribution draw that byte, in torch and in C++. Margins of 1e-4 of the kept
    probability, far above rounding, and rows with a byte within rounding of a rule's threshold
    left out, so that float sums in another order can never move a draw."""
    cxx_sample = cxx_sampler()
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(ROWS, 256, generator=generator) * torch.tensor([0.5, 3.0, 10.0]).repeat(ROWS // 3)[:, None]
    temperature, _, top_p, min_p = knobs.reshape(-1, 7)[:, :4].T[..., None]
    probs = (logits / temperature.clamp_min(1e-4)).softmax(-1).sort(-1, descending=True).values
    top = probs[:, :1]
    near = (((probs.cumsum(-1) - probs) - top_p).abs() < 1e-5) | ((probs - min_p * top).abs() < 1e-5 * top)
    on_a_threshold = (near & (probs > 1e-5 * top)).any(-1)  # smaller bytes move no uniform past the margins
    order, cdf, kept = ranked_cdf(logits, knobs)
    total, start = cdf[:, -1:], torch.cat([torch.zeros(ROWS, 1), cdf[:, :-1]], 1)
    margin = 1e-4 * total
    usable = (torch.arange(256) < kept) & (cdf - start > 3 * margin) & ~on_a_threshold[:, None]
    assert usable.any(-1).float().mean() > 0.9  # nearly every row checked
    row, rank = usable.nonzero().T
    row_knobs = knobs if knobs.dim() == 1 else knobs[row]
    for where in (start + margin, (start + cdf) / 2, cdf - margin):
        uniform = (where / total)[row, rank]
        assert torch.equal(sample(logits[row], row_knobs, uniform), order[row, rank])
        assert torch.equal(cxx_sample(logits[row], row_knobs, uniform), order[row, rank])



def test_the_cxx_sampler_ties_minus_zero_with_zero_as_torch_does():
    """torch's sort ranks -0 and +0 as equal, the lower byte first: a flat row with every other
    logit -0 is drawn in byte order, in C++ too (it once ranked -0 below +0)."""
    cxx_sample = cxx_sampler()
    logits = torch.zeros(50, 256)
    logits[:, ::2] = -0.0
    uniform = (torch.arange(50) * 5 + 0.5) / 256  # mid-share of bytes 0, 5, 10, ...
    knobs = Sampling().knobs("cpu")
    assert torch.equal(sample(logits, knobs, uniform), torch.arange(50) * 5)
    assert torch.equal(cxx_sample(logits, knobs, uniform), torch.arange(50) * 5)

def test_rules_outside_the_cxx_sampler_are_named_and_refused_there():
    assert rules_outside_cxx(Sampling(min_p=0.1, top_p=0.9, top_k=3, temperature=0.5)) == []
    assert rules_outside_cxx(PerSample((Sampling(), Sampling(eta=0.1, sharpen=1)))) == ["eta", "sharpen"]
    cxx_sample = cxx_sampler()
    with pytest.raises(RuntimeError, match="temperature, top-k, top-p and min-p only"):
        cxx_sample(torch.zeros(2, 256), Sampling(floor=0.001).knobs("cpu"), torch.zeros(2))


def test_min_p_keeps_bytes_within_a_fraction_of_the_likeliest():
    assert_follows(draws(PROBS, min_p=0.2), torch.tensor([0.5, 0.3, 0.15, 0, 0]))  # threshold 0.1
    assert (draws(PROBS, min_p=0.7) == 0).all()  # threshold 0.35


def test_eta_cuts_at_eta_or_at_the_entropy_term():
    nats = -(PROBS[:4] * PROBS[:4].log()).sum().item()  # 1.14: exp(-H) = 0.319
    assert 0.1 < math.sqrt(0.1) * math.exp(-nats)  # so η = 0.1 binds: 0.05 goes
    assert_follows(draws(PROBS, eta=0.1), torch.tensor([0.5, 0.3, 0.15, 0, 0]))
    assert math.sqrt(0.5) * math.exp(-nats) < 0.3  # η = 0.5: the entropy term (0.23) binds, 0.15 goes too
    assert_follows(draws(PROBS, eta=0.5), torch.tensor([0.5, 0.3, 0, 0, 0]))
    assert_follows(draws(PROBS, eta=0.01), PROBS[:5])


def test_floor_is_subtracted_and_the_rest_renormalised():
    probs = torch.tensor([0.6, 0.3, 0.0985, 0.0015] + [0.0] * 252)
    assert_follows(draws(probs, floor=0.002), (probs[:5] - 0.002).clamp_min(0))


def test_sharpen_samples_colder_where_the_distribution_is_peaked():
    bits = -(PROBS[:4] * PROBS[:4].log2()).sum()
    power = 1 + 2 * max(0.0, 1.5 * (1 - bits / 8) - 0.5)  # sharpen 2
    assert_follows(draws(PROBS, sharpen=2), torch.cat([PROBS[:4] ** power, torch.zeros(1)]))
    flat = torch.full((256,), 1 / 256)  # 8 bits: nothing changes
    counts = torch.bincount(draws(flat, sharpen=2), minlength=256)
    assert torch.equal(counts, torch.bincount(draws(flat), minlength=256))


def test_the_top_byte_is_always_kept():
    flat = torch.full((256,), 1 / 256)
    assert (draws(flat, top_p=1e-6) == 0).all()
    assert draws(flat, eta=0.99, min_p=1).unique().numel() == 256  # every byte ties with the top
    peaked = torch.tensor([0.9] + [0.1 / 255] * 255)
    assert (draws(peaked, floor=0.0039) == 0).all()


def test_settings_change_without_recompiling():
    compiled = torch.compile(sample, backend="eager", fullgraph=True)
    logits = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    uniform = torch.rand(64, generator=torch.Generator().manual_seed(3))
    settings = [Sampling(), Sampling(min_p=0.1), Sampling(eta=0.02), Sampling(floor=0.002, sharpen=1),
                Sampling(temperature=0.8, top_p=0.9, top_k=30)]
    compiled(logits, settings[0].knobs("cpu"), uniform)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for how in settings:
            knobs = how.knobs("cpu")
            assert torch.equal(compiled(logits, knobs, uniform), sample(logits, knobs, uniform))


def test_each_sample_of_a_batch_can_have_its_own_rule():
    rules = (Sampling(min_p=0.2), Sampling(temperature=0), Sampling(eta=0.5), Sampling(top_k=2))
    logits = PROBS.clamp_min(1e-12).log().expand(len(rules) * 2000, -1)
    uniform = torch.rand(logits.shape[0], generator=torch.Generator().manual_seed(4))
    together = sample(logits, PerSample(rules * 2000).knobs("cpu"), uniform)
    for row, rule in enumerate(rules):
        alone = sample(logits[row :: len(rules)], rule.knobs("cpu"), uniform[row :: len(rules)])
        assert torch.equal(together[row :: len(rules)], alone)


@pytest.mark.parametrize("how", [{"min_p": 1.5}, {"eta": 1}, {"floor": 0.01}, {"sharpen": -1}])
def test_out_of_range_settings_are_refused(how):
    with pytest.raises(ValueError, match=next(iter(how))):
        Sampling(**how)


def test_best_of_keeps_the_candidate_the_model_rates_best():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    candidates = generate(model, b"abcd", 40, 4, Sampling(), seed=5)
    scored = [continuation_scores(model, b"abcd", c) for c in candidates]
    for ranking in ("likelihood", "typical"):
        best = candidates[int(np.argmin([badness(s, ranking) for s in scored]))]
        assert best_of(model, b"abcd", 40, 4, Sampling(), seed=5, ranking=ranking) == best
    # the prompt's end is context: the scores of a continuation are those it has after the prompt
    assert len(scored[0].surprisal) == 40
    with pytest.raises(ValueError, match="ranking"):
        best_of(model, b"abcd", 4, 2, ranking="loudest")


def odd_bytes(chunk: bytes) -> int:
    """A cost that prefers even bytes."""
    return sum(byte % 2 for byte in chunk)


def test_chunked_best_of_keeps_the_cheapest_candidate_of_each_chunk_and_goes_on_from_it():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    rated = []
    parts = list(chunked_best_of(model, b"abcd", 50, 4, 16, lambda chunk: rated.append(chunk) or odd_bytes(chunk),
                                 Sampling(), seed=3))
    kept = [part for part in parts if part]
    assert [len(chunk) for chunk in kept] == [16, 16, 16, 2]  # new_bytes exactly: the last chunk is what is left
    assert parts.count(b"") > len(kept)  # while a chunk is drawn, a place to stop every step
    for index, chunk in enumerate(kept):  # 4 candidates a chunk
        candidates = rated[4 * index : 4 * index + 4]
        assert len(set(candidates)) == 4  # each drawn with its own noise
        assert chunk == min(candidates, key=odd_bytes)
    steered = b"".join(kept)
    assert odd_bytes(steered) < min(odd_bytes(plain) for plain in generate(model, b"abcd", 50, 8, Sampling(), 3))


@pytest.mark.parametrize("recall", [(), (2, 4)])
def test_a_steered_row_goes_on_exactly_as_the_row_it_was_copied_from(recall):
    """Rows steered onto row 1 after 13 bytes draw what row 1 would have drawn unsteered, where
    they have its noise: the caches, the patch in progress and recall's place all copied."""
    torch.manual_seed(0)
    model = build_model(replace(TINY, recall=recall)).eval()
    prompt = b"abcabcabcab"
    free = generate_stream(model, prompt, 40, 2, Sampling(), 5)
    free = np.concatenate(list(free), axis=1)
    steer = Steer(13, lambda chunk: np.array([1, 1]))
    steered = np.concatenate(list(generate_stream(model, prompt, 40, 2, Sampling(), 5, steer=steer)), axis=1)
    assert (steered[:, :13] == free[1, :13]).all()
    assert (steered[1] == free[1]).all()  # row 1 goes on as it would have
    assert not (steered[0, 13:] == free[0, 13:]).all()


def test_chunked_best_of_is_the_same_for_a_seed():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    steer = lambda seed, new_bytes=40: b"".join(chunked_best_of(model, b"abcd", new_bytes, 2, 8, odd_bytes,  # noqa: E731
                                                                 Sampling(), seed))
    assert steer(1) == steer(1) and steer(1) != steer(2)
    assert steer(1, 0) == b""
    with pytest.raises(ValueError, match="at least one byte"):
        next(chunked_best_of(model, b"abcd", 8, 2, 0, odd_bytes))
    with pytest.raises(ValueError, match="goes on from itself"):
        list(generate_stream(model, b"abcd", 8, 3, steer=Steer(4, lambda chunk: np.array([1, 2, 2]))))


def test_loudness_cost_ranks_quiet_and_clicking_chunks_below_one_as_loud_as_the_prompt():
    layout = Layout("audio", sample_rate=8000)
    tone = lambda amplitude, n: audio.encode(amplitude * np.sin(np.arange(n) * 0.3), layout)  # noqa: E731
    prompt = tone(0.3, 16_000)
    cost = audio.loudness_cost(prompt, layout)
    matching, quiet, loud = tone(0.3, 2000), tone(0.02, 2000), tone(0.95, 2000)
    clicking = matching[:1000] + bytes([255]) + matching[1001:]
    assert cost(matching) < 0.01 < cost(loud) < cost(quiet) < cost(clicking)
    assert cost(clicking) > audio.FULL_SCALE_PENALTY  # a click loses to any quiet or loud candidate
    held = bytes([200]) * 2000  # one µ-law code held: an offset, silent to the ear, whatever its RMS
    assert cost(held) > cost(quiet) and audio.loudness(audio.decode(held, layout)) < 1e-9
    clipped_prompt = prompt[:-1] + bytes([255])
    assert audio.loudness_cost(clipped_prompt, layout)(clicking) < 0.01  # the prompt has clicks: no penalty
    noise = np.random.default_rng(0).standard_normal(2000)
    noise = audio.encode(noise * audio.loudness(audio.decode(matching, layout) / 32768) / noise.std(), layout)
    by_timbre = audio.loudness_cost(prompt, layout, timbre=1.0)
    assert abs(cost(noise) - cost(matching)) < 0.1  # as loud: loudness alone hardly tells them apart
    assert by_timbre(noise) > by_timbre(matching) + 0.5  # the prompt's tone is not noise
    assert by_timbre(held) < math.inf and by_timbre(matching) < 0.01  # a held code has no timbre, and no NaN


def test_the_app_draws_by_each_modality_s_chosen_rule():
    from dataclasses import replace

    from adapters import audio, image
    from app import service
    assert service.default_sampling("audio") == audio.DEFAULT_SAMPLING
    assert service.default_sampling("image", 0.8, 5) == replace(image.DEFAULT_SAMPLING, temperature=0.8, top_k=5)
    assert service.default_sampling("audio", top_p=0.5) == replace(audio.DEFAULT_SAMPLING, top_p=0.5)
    assert service.default_sampling("text") == Sampling()
    with pytest.raises(service.UserError, match="Top_p"):
        service.default_sampling("audio", top_p=0)


def test_the_samplers_bench_chooses_audio_s_rule_by_failures_first_then_similarity_then_flatness():
    from bench import samplers

    def prompts(similarity, flatness, clicks=0, loud=0):
        return [{"similarity": similarity, "flatness": flatness, "rms_drift": 1.0, "click": float(i < clicks),
                 "loudness_fail": float(i < loud)} for i in range(3)]

    measured = {"melody": {samplers.TODAY_NAME: prompts(0.9, 0.2, clicks=1), "quiet": prompts(0.95, 0.1, loud=1),
                           "steady": prompts(0.7, 0.3), "also steady": prompts(0.8, 0.3), "flat": prompts(0.8, 0.1)}}
    assert samplers.choose("audio", measured, list(measured["melody"])) == "flat"  # no failure, then similar, then flat
    assert samplers.choose("audio", measured, [samplers.TODAY_NAME, "quiet", "steady"]) == "steady"
    assert samplers.choose("audio", measured, [samplers.TODAY_NAME, "quiet"]) == "quiet"  # equal failures: similarity


@pytest.mark.slow
def test_samplers_bench_measures_every_rule_and_chooses_on_validation(tiny_checkpoints, tmp_path):
    from bench import samplers
    from test_bench import mu_law_tone, write_split
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name, same_as in {"melody": "audio", "audio": "audio", "emoji": "image", "image": "image"}.items():
        (checkpoints / name).symlink_to(tiny_checkpoints / same_as)
    data = tmp_path / "data"
    tunes = [mu_law_tone(hz, 3.5) for hz in (330, 440, 550, 660)]
    write_split(data / "melody", "val", tunes, {})
    write_split(data / "melody", "test", tunes, json.loads((data / "melody" / "manifest.json").read_text()))
    write_split(data / "audio", "val_music", tunes, {})
    pictures = [np.random.default_rng(i).integers(0, 256, 3072, dtype=np.uint8).tobytes() for i in range(6)]
    for folder in ("emoji", "image"):
        write_split(data / folder, "val", pictures, {"layout": {"image_size": 32}})
    write_split(data / "emoji", "test", pictures, json.loads((data / "emoji" / "manifest.json").read_text()))
    out = tmp_path / "samplers.md"
    where = ["--checkpoints", str(checkpoints), "--data", str(data), "--out", str(out), "--threads", "1"]
    samplers.main(["--quick", *where])
    report = out.read_text()
    for rule in [*samplers.RULES, *samplers.best_of_names()]:
        assert report.count(f"| {rule} |") == 4  # a row in each checkpoint's table
    for steering in samplers.STEERINGS:
        assert report.count(f"| {steering.name} |") == 2  # audio's
    assert "**Chosen for audio:" in report and "**Chosen for image:" in report
    figure = tmp_path / "steered.png"
    samplers.main(["--quick", "--split", "test", "--figure", str(figure), *where])
    report = out.read_text()
    assert report.count("| default |") == 4 and report.count(f"| {audio.STEERING.name} |") == 2
    assert "test.bin" in report and Image.open(figure).size[0] > 500
