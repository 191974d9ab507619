import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from model import MegaByteConfig, Sampling, build_model, generate
from model.best_of import best_of, badness, continuation_scores
from model.sampling import PerSample, sample

DRAWS = 40_000
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * 252)
TINY = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=2, global_heads=2,
                      local_dim=16, local_layers=2, local_heads=2, max_bytes=64)


def draws(probs: torch.Tensor, **how) -> torch.Tensor:
    """DRAWS bytes from one distribution, with fixed noise."""
    logits = probs.clamp_min(1e-12).log().expand(DRAWS, -1)
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0))
    return sample(logits, Sampling(**how).knobs("cpu"), uniform)


def assert_follows(drawn: torch.Tensor, expected: torch.Tensor):
    """Only bytes of positive expected probability are drawn, in proportions a chi-square test accepts."""
    counts = torch.bincount(drawn, minlength=256).double()
    expected = torch.cat([expected, torch.zeros(256 - len(expected))]).double()
    allowed = expected > 0
    assert counts[~allowed].sum() == 0
    assert chisquare(counts[allowed].numpy(), (expected[allowed] / expected.sum() * DRAWS).numpy()).pvalue > 0.001


def old_sample(logits, knobs, uniform):
    """sample() before min-p, η and LPCNet's tricks, for checking that the old settings draw the same bytes."""
    temperature, top_k, top_p = knobs[0], knobs[1], knobs[2]
    ranked, order = logits.float().sort(dim=-1, descending=True, stable=True)
    ranked = ranked / temperature.clamp_min(1e-4)
    probs = ranked.softmax(-1)
    rank = torch.arange(ranked.shape[-1])
    keep = ((probs.cumsum(-1) - probs) < top_p) & (rank < top_k)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
    choice = (ranked.masked_fill(~keep, float("-inf")) + gumbel).argmax(-1)
    choice = torch.where(temperature > 0, choice, torch.zeros_like(choice))
    return order.gather(-1, choice[:, None])[:, 0]


@pytest.mark.parametrize("how", [{}, {"temperature": 0}, {"temperature": 0.7, "top_k": 40},
                                 {"top_p": 0.9}, {"temperature": 1.3, "top_k": 5, "top_p": 0.5}])
def test_the_old_settings_draw_the_same_bytes(how):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5000, 256, generator=generator) * torch.tensor([0.5, 3.0, 10.0]).repeat(1667)[:5000, None]
    uniform = torch.rand(logits.shape, generator=generator)
    knobs = Sampling(**how).knobs("cpu")
    assert torch.equal(sample(logits, knobs, uniform), old_sample(logits, knobs, uniform))


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
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3))
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
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(4))
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
    assert "**Chosen for audio:" in report and "**Chosen for image:" in report
    samplers.main(["--quick", "--split", "test", *where])
    assert out.read_text().count("| default |") == 4 and "test.bin" in out.read_text()
