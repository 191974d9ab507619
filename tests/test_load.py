"""bench.load, short: a few clients for 30 s on the tiny checkpoints, one request in five a bad input."""

import pytest

from bench import load


@pytest.mark.slow
@pytest.mark.timeout(900)  # its own server, 34 requests alone, 30 s of load: 6.5 min on 2 cores shared with training
def test_under_load_every_error_is_ours_no_file_is_left_and_the_app_still_answers(served_checkpoints, tmp_path):
    out = tmp_path / "load.md"
    result = load.main(["--checkpoints", str(served_checkpoints), "--quick", "--eager", "--out", str(out)])
    unexplained = {(o.request.endpoint, o.request.what, o.failure or o.app_error) for o in result.unexplained}
    assert not unexplained
    assert result.tracebacks == 0
    crafted = [o for o in result.alone if o.request.what.startswith("crafted .mbz")]
    assert len(crafted) == 4 and all(o.verdict(result.refusals) == "refused" for o in crafted)
    assert {o.request.endpoint for o in result.outcomes} == set(load.ENDPOINTS)
    assert result.stray_files == [] and result.left_files == []
    assert result.plain_seconds is not None  # the plain explore answered after the load
    assert "| unexplained errors (alone and under load) | 0 | 0 |" in out.read_text()
