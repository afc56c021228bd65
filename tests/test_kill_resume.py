"""Training SIGKILLed at random moments (some during a checkpoint write) resumes exactly."""

import pytest
from scripts import kill_resume


@pytest.mark.timeout(600)
def test_ten_random_kills_resume_to_the_uninterrupted_result(tmp_path, capsys):
    counts = kill_resume.run(kills=10, max_steps=120, seed=1, workdir=str(tmp_path))
    assert counts["kills"] == 10
    assert counts["resumed_from_checkpoint"] >= 8  # almost every kill lands after a commit
    with capsys.disabled():
        print(f"\nkill/resume counts: {counts}")


@pytest.mark.timeout(600)
def test_a_gan_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    counts = kill_resume.run(kills=3, max_steps=300, seed=2, workdir=str(tmp_path), kind="gan")
    assert counts["kills"] == 3 and counts["resumed_from_checkpoint"] >= 2
    with capsys.disabled():
        print(f"\nGAN kill/resume counts: {counts}")
