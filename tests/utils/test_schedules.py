"""The schedules against the arrays the official code precomputes.

Golden arrays: facebookresearch/dino at 7c446df5b9f45747937fb0d72314eb9f7b66930a, utils.cosine_scheduler
and main_dino.DINOLoss.teacher_temp_schedule; facebookresearch/dinov2 at
b8931f7bf91576930313be2c6d6af376033b35f0, dinov2/utils/utils.CosineScheduler (as dinov2/train/train.py's
build_schedulers calls it); bytedance/ibot at da316d82636a7a7356835ef224b13d5f3ace0489,
main_ibot.iBOTLoss.teacher_temp2_schedule. Run with numpy in float64; the values are printed to 17
digits.
"""

import itertools

import pytest

from sslvit.utils.schedules import cosine_ramp, cosine_schedule, linspace_at, whole_epochs

# cosine_scheduler(5e-4, 1e-6, epochs=5, niter_per_ep=10, warmup_epochs=1): 10 warm-up steps, 40 cosine.
LR_50 = [
    0.0, 5.555555555555556e-05, 0.00011111111111111112, 0.0001666666666666667, 0.00022222222222222223,
    0.0002777777777777778, 0.0003333333333333334, 0.0003888888888888889, 0.00044444444444444447, 0.0005,
    0.0005, 0.0004992308747664155, 0.0004969282409784868, 0.0004931062951392203, 0.00048778860081564085,
    0.00048100794336156604, 0.0004728061277849978, 0.000463233721006346, 0.0004523497400965494,
    0.00044022128841720773, 0.0004269231419060436, 0.0004125372880583809, 0.00039715242044697206,
    0.00038086339189662925, 0.00036377062968501693, 0.00034597951637508993, 0.0003275997400965494,
    0.00030874461828204845, 0.00028953039902753766, 0.00027007554438409736, 0.0002505,
    0.0002309244556159027, 0.00021146960097246246, 0.0001922553817179516, 0.00017340025990345064,
    0.0001550204836249101, 0.00013722937031498307, 0.00012013660810337076, 0.00010384757955302797,
    8.84627119416192e-05, 7.40768580939564e-05, 6.0778711582792276e-05, 4.865025990345063e-05,
    3.7766278993653996e-05, 2.8193872215002235e-05, 1.9992056638433958e-05, 1.3211399184359193e-05,
    7.893704860779699e-06, 4.071759021513154e-06, 1.769125233584573e-06,
]  # fmt: skip
# cosine_scheduler(0.996, 1, 5, 10): the EMA momentum; every 7th value and the last.
MOMENTUM_50 = {
    0: 0.996, 7: 0.9961903458950679, 14: 0.9967251520205026, 21: 0.9975026202256703, 28: 0.9983747626291715,
    35: 0.9991755705045849, 42: 0.9997526133600877, 49: 0.9999960534568565,
}  # fmt: skip
# cosine_scheduler(0.04, 0.4, 5, 10): weight decay; every 7th value and the last.
WD_50 = {
    0: 0.04, 7: 0.05713113055611646, 14: 0.10526368184523582, 21: 0.17523582031032617,
    28: 0.25372863662543044, 35: 0.32580134541264516, 42: 0.3777352024078955, 49: 0.3996448111170889,
}  # fmt: skip
# cosine_scheduler(1.0, 0.1, 3, 7, warmup_epochs=1, start_warmup_value=0.2): 7 warm-up steps, 14 cosine.
WARM_START_21 = [
    0.2, 0.33333333333333337, 0.4666666666666667, 0.6000000000000001, 0.7333333333333334,
    0.8666666666666667, 1.0, 1.0, 0.9887175604818206, 0.9554359905560885, 0.9018241671106134,
    0.8305704108364301, 0.7452476826029011, 0.6501344202803414, 0.55, 0.44986557971965857,
    0.3547523173970989, 0.26942958916356996, 0.19817583288938673, 0.14456400944391146, 0.11128243951817933,
]  # fmt: skip
# cosine_scheduler(2.0, 0.5, 4, 1, warmup_epochs=1): a one-step warm-up is linspace(0, 2, 1) = [0].
ONE_STEP_WARMUP = [0.0, 2.0, 1.625, 0.8750000000000002]
# DINOv2: CosineScheduler(0.07, 0.07, total_iters=10, warmup_iters=10, start_warmup_value=0.04)[0..14],
# its teacher temperature over 2 epochs of 5 steps: a new value every step, then constant.
DINOV2_TEACHER_TEMP = [
    0.04, 0.043333333333333335, 0.04666666666666667, 0.05, 0.05333333333333334, 0.05666666666666667,
    0.060000000000000005, 0.06333333333333334, 0.06666666666666668, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07,
]  # fmt: skip
# DINO / iBOT per-epoch teacher temperature: linspace(0.04, 0.07, 3) then 0.07, for 8 epochs.
TEACHER_TEMP_EPOCHS = [0.04, 0.05500000000000001, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07]
# iBOTLoss(..., 0.04, 0.07, warmup_teacher_temp_epochs=3, nepochs=8, mim_start_epoch=2)
# .teacher_temp2_schedule: the patch warm-up starts with masked image modelling.
IBOT_PATCH_TEMP_MIM_START_2 = [0.04, 0.04, 0.04, 0.05500000000000001, 0.07, 0.07, 0.07, 0.07]
# The same with the paper's 30 warm-up epochs over 800, at epochs 0, 1, 15, 29, 30.
IBOT_PATCH_TEMP_PAPER = {0: 0.04, 1: 0.04103448275862069, 15: 0.05551724137931035, 29: 0.07, 30: 0.07}


def test_lr_equals_cosine_scheduler_with_warmup():
    values = [cosine_schedule(s, 50, 5e-4, 1e-6, warmup_steps=10) for s in range(50)]
    assert values == pytest.approx(LR_50, rel=1e-12, abs=1e-18)
    # the peak is reached at the end of the warm-up and again at the first cosine step; never min_lr
    assert values[9] == pytest.approx(5e-4, rel=1e-12) and values[10] == pytest.approx(5e-4, rel=1e-12)
    assert values[-1] == pytest.approx(1.769e-6, rel=1e-3)
    # DINOv2's CosineScheduler (same array) holds min_lr after the last step
    assert cosine_schedule(50, 50, 5e-4, 1e-6, warmup_steps=10) == 1e-6
    assert cosine_schedule(10_000, 50, 5e-4, 1e-6, warmup_steps=10) == 1e-6


def test_momentum_and_weight_decay_equal_cosine_scheduler():
    momentum = [cosine_schedule(s, 50, 0.996, 1.0) for s in range(50)]
    assert {s: momentum[s] for s in MOMENTUM_50} == pytest.approx(MOMENTUM_50, rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(momentum)) and momentum[-1] < 1.0
    wd = {s: cosine_schedule(s, 50, 0.04, 0.4) for s in WD_50}
    assert wd == pytest.approx(WD_50, rel=1e-12)


def test_warmup_from_a_start_value_and_a_one_step_warmup():
    values = [cosine_schedule(s, 21, 1.0, 0.1, warmup_steps=7, warmup_start=0.2) for s in range(21)]
    assert values == pytest.approx(WARM_START_21, rel=1e-12)
    values = [cosine_schedule(s, 4, 2.0, 0.5, warmup_steps=1) for s in range(4)]
    assert values == pytest.approx(ONE_STEP_WARMUP, rel=1e-12, abs=1e-15)


def test_teacher_temperatures_per_step_and_per_epoch():
    per_step = [linspace_at(s, 10, 0.04, 0.07) for s in range(15)]
    assert per_step == pytest.approx(DINOV2_TEACHER_TEMP, rel=1e-12)
    per_epoch = [linspace_at(e, 3, 0.04, 0.07) for e in range(8)]
    assert per_epoch == pytest.approx(TEACHER_TEMP_EPOCHS, rel=1e-12)
    # iBOT's patch temperature: held at its warm-up value until masked image modelling starts
    patch = [linspace_at(e - 2, 3, 0.04, 0.07) for e in range(8)]
    assert patch == pytest.approx(IBOT_PATCH_TEMP_MIM_START_2, rel=1e-12)
    paper = {e: linspace_at(e, 30, 0.04, 0.07) for e in IBOT_PATCH_TEMP_PAPER}
    assert paper == pytest.approx(IBOT_PATCH_TEMP_PAPER, rel=1e-12)
    assert linspace_at(0, 0, 0.04, 0.07) == 0.07  # no warm-up
    assert linspace_at(0, 1, 0.04, 0.07) == 0.04  # linspace of one value is its start


def test_cosine_ramp_reaches_its_end():
    values = [cosine_ramp(s, 11, 1.0, 1 / 16) for s in range(11)]
    assert values[0] == 1.0 and values[5] == pytest.approx((1 + 1 / 16) / 2)
    assert values[-1] == pytest.approx(1 / 16) and cosine_ramp(100, 11, 1.0, 1 / 16) == pytest.approx(1 / 16)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert cosine_ramp(0, 1, 1.0, 0.5) == 0.5


def test_whole_epochs():
    assert whole_epochs(30.0, "warmup_teacher_temp_epochs") == 30
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs must be a whole number of epochs"):
        whole_epochs(0.5, "warmup_teacher_temp_epochs")
