"""Recall (model.recall): the vectorised plan and the byte-at-a-time Recaller agree to the bit,
and every path that predicts (score, .mbz, generation) uses it where the config asks."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import ConfigError, MegaByteConfig, Sampling, build_model, config_from_dict, generate, score
from model.compress import coded_scores, compress, decompress, read_header
from model.recall import Recaller, mix, plan

ORDERS = (2, 4, 8)


def stepwise(data: bytes, orders, lookback):
    recaller, predicted, weight = Recaller(orders, lookback), [], []
    for byte in data:
        guess, w = recaller.predict()
        predicted.append(guess)
        weight.append(w)
        recaller.push(byte)
    return np.array(predicted), np.array(weight, np.float32)


# inputs with repeats at every distance: a few phrases over a small alphabet, pasted in any order
phrases = st.lists(st.binary(min_size=1, max_size=24).map(lambda b: bytes(c % 5 for c in b)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(phrases, st.lists(st.integers(0, 5), max_size=40), st.sampled_from([(1,), ORDERS, (3, 17)]),
       st.integers(4, 200))
def test_the_plan_and_the_recaller_predict_the_same_bytes_with_the_same_weights(phrases, picks, orders, lookback):
    data = b"".join(phrases[i % len(phrases)] for i in picks)
    predicted, weight = plan(data, orders, lookback)
    expected_predicted, expected_weight = stepwise(data, orders, lookback)
    assert (predicted == expected_predicted).all()
    assert (weight == expected_weight).all()  # float32, bit for bit: the coder's two ends share them


def test_recall_predicts_what_followed_the_last_occurrence_within_the_lookback():
    data = b"abcdXabcdY" + bytes(range(100, 160)) + b"abcd"
    predicted, weight = plan(data, (4,), lookback=1000)
    assert chr(predicted[9]) == "X" and weight[9] == np.float32(0.5)  # the first try of its order: (0 + .5) / 1
    last = plan(data + b"?", (4,), lookback=1000)[0][-1]
    assert chr(last) == "Y"  # the most recent occurrence, not the first
    assert plan(data + b"?", (4,), lookback=60)[0][-1] == -1  # beyond the lookback: nothing recalled


def test_a_continuation_copies_like_lz77_when_the_repeat_is_shorter_than_asked():
    recaller = Recaller((2,), 100)
    recaller.extend(b"xyzxyzxy")
    assert recaller.continuation(7)[0] == b"zxyzxyz"
    assert Recaller((2,), 100).continuation(3) == (b"", 0.0)


def test_generation_keeps_its_place_in_the_occurrence_past_a_byte_that_differs():
    recaller = Recaller((3,), 100)
    recaller.extend(b"abcdefgh" + b"abc" + b"Q")  # "abc" recalls "defgh"; the model drew Q for d
    assert recaller.predict() == (-1, 0.0)  # scoring's recall has lost the match
    assert recaller.continuation(4)[0] == b"efgh"  # generation goes on where the tune went


def test_mixing_keeps_a_distribution_and_a_weight_of_zero_changes_nothing():
    probs = torch.softmax(torch.randn(3, 256), -1)
    mixed = mix(probs, torch.tensor([5, -1, 7]), torch.tensor([0.9, 0.0, 0.25]))
    assert torch.allclose(mixed.sum(-1), torch.ones(3))
    assert torch.equal(mixed[1], probs[1])
    assert mixed[0, 5] >= 0.9


def test_the_config_keeps_recall_and_older_configs_stay_as_they_were():
    plain = MegaByteConfig(max_bytes=64)
    assert "recall" not in plain.to_dict()
    with_recall = dataclasses.replace(plain, recall=(4, 8))
    assert config_from_dict(with_recall.to_dict()) == with_recall
    for bad in ([8, 4], [0], [64], "8", [True]):
        with pytest.raises(ConfigError, match="recall"):
            MegaByteConfig(max_bytes=64, recall=bad)


def tiny(recall=()):
    torch.manual_seed(0)
    config = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=1, global_heads=1, local_dim=16, local_layers=1,
                            local_heads=1, max_bytes=256, recall=recall)
    return build_model(config).eval()


REPEATED = bytes(np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8)) * 12  # a random phrase, repeated


def test_scores_with_recall_fall_on_repeats_that_the_neural_model_does_not_know():
    plain, recalled = score(tiny(), REPEATED), score(tiny(ORDERS), REPEATED)
    assert recalled.bits_per_byte < 0.25 * plain.bits_per_byte
    assert np.allclose(recalled.surprisal[:40], plain.surprisal[:40], atol=1e-4)  # nothing to recall in the first phrase


def test_a_checkpoint_with_recall_codes_exactly_and_in_the_bits_it_scores():
    model = tiny(ORDERS)
    blob = compress(model, REPEATED, "sha", {})
    assert decompress(model, blob, "sha")[0] == REPEATED
    payload = read_header(blob)["payload_bytes"]
    assert payload < read_header(compress(tiny(), REPEATED, "sha", {}))["payload_bytes"] / 3
    assert abs(coded_scores(model, REPEATED).surprisal.sum() / 8 - payload) < 10


def test_generation_with_recall_goes_on_with_the_repeated_phrase():
    phrase = REPEATED[:40]
    out = generate(tiny(ORDERS), REPEATED[:400], 80, samples=2, sampling=Sampling(top_p=0.9), seed=3)
    expected = (phrase * 3)[:80]
    assert all(np.mean(np.frombuffer(o, np.uint8) == np.frombuffer(expected, np.uint8)) > 0.5 for o in out)
    plain = generate(tiny(), REPEATED[:400], 80, samples=2, sampling=Sampling(top_p=0.9), seed=3)
    assert all(np.mean(np.frombuffer(o, np.uint8) == np.frombuffer(expected, np.uint8)) < 0.2 for o in plain)
    assert out == generate(tiny(ORDERS), REPEATED[:400], 80, samples=2, sampling=Sampling(top_p=0.9), seed=3)
