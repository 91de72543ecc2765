from types import SimpleNamespace

from sslvit.utils.epoch_length import optimizer_steps_per_epoch


def _trainer(max_epochs, batches=float("inf"), accumulate=1):
    return SimpleNamespace(
        max_epochs=max_epochs, num_training_batches=batches, accumulate_grad_batches=accumulate
    )


def test_positive_max_epochs_divide_the_total():
    assert optimizer_steps_per_epoch(_trainer(10, batches=50), total_steps=400) == 40.0


def test_max_epochs_minus_one_uses_the_loader_length():
    # trainer.max_epochs=-1 trainer.max_steps=1000 over 100 batches of 2 accumulated: an epoch is 50
    # steps, not the 1000 of the whole run (which made a 10-epoch warm-up 10 runs long).
    assert optimizer_steps_per_epoch(_trainer(-1, batches=100, accumulate=2), total_steps=1000) == 50.0
    assert optimizer_steps_per_epoch(_trainer(-1, batches=101, accumulate=2), total_steps=1000) == 51.0


def test_unknown_loader_length_falls_back_to_the_total():
    assert optimizer_steps_per_epoch(_trainer(-1), total_steps=1000) == 1000.0
