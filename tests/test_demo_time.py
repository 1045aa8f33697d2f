"""The demo says how long it will take on this machine, from a few timed VAE steps (issue 23 item 5)."""

import pytest


def test_the_demo_estimates_its_time_from_a_timed_vae_step():
    from aldm.experiments.demo import estimated_demo_seconds, vae_step_seconds

    step = vae_step_seconds(steps=1)
    assert 0.0 < step < 30.0
    assert estimated_demo_seconds(0.13) == pytest.approx(845, rel=0.05)  # the development machine: 878 s
    assert estimated_demo_seconds(0.33) == pytest.approx(2129, rel=0.05)  # the slower one without tcmalloc
    assert estimated_demo_seconds(0.2, regions=True) > estimated_demo_seconds(0.2)
