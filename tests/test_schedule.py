import math

import numpy as np
import pytest

from keras_ddpm import ddpm_schedule
from keras_ddpm.schedule import SCHEDULE_KEYS


def reference_tables(betas):
    """Float64 tables written directly from the formulas, one t at a time."""
    T = len(betas)
    ref = {key: np.zeros(T + 1) for key in SCHEDULE_KEYS}
    ref["alpha_t"][0] = ref["alphabar_t"][0] = ref["sqrtab"][0] = 1.0
    ref["oneover_sqrtalpha"][0] = 1.0
    alphabar = 1.0
    for t in range(1, T + 1):
        beta = betas[t - 1]
        alphabar_prev = alphabar
        alphabar *= 1.0 - beta
        ref["beta_t"][t] = beta
        ref["alpha_t"][t] = 1.0 - beta
        ref["alphabar_t"][t] = alphabar
        ref["sqrtab"][t] = math.sqrt(alphabar)
        ref["sqrtmab"][t] = math.sqrt(1.0 - alphabar)
        ref["oneover_sqrtalpha"][t] = 1.0 / math.sqrt(1.0 - beta)
        ref["mab_over_sqrtmab"][t] = beta / math.sqrt(1.0 - alphabar)
        ref["sqrt_beta_t"][t] = math.sqrt(beta)
        variance = beta * (1.0 - alphabar_prev) / (1.0 - alphabar)
        ref["posterior_variance"][t] = variance
        ref["posterior_std"][t] = math.sqrt(variance)
    return ref


@pytest.mark.parametrize("beta1,beta2,T", [(1e-4, 0.02, 1000), (1e-3, 0.2, 10), (0.01, 0.5, 2)])
def test_linear_tables_match_float64_reference(beta1, beta2, T):
    sched = ddpm_schedule(beta1, beta2, T)
    betas = [beta1 + (beta2 - beta1) * (t - 1) / (T - 1) for t in range(1, T + 1)]
    ref = reference_tables(betas)
    assert set(sched) == set(SCHEDULE_KEYS)
    for key in SCHEDULE_KEYS:
        assert sched[key].dtype == np.float32, key
        assert sched[key].shape == (T + 1,), key
        np.testing.assert_allclose(sched[key], ref[key], rtol=2e-6, atol=1e-7, err_msg=key)


def test_lecture_endpoints_and_index_zero():
    sched = ddpm_schedule(1e-4, 0.02, 1000)
    assert sched["beta_t"][1] == np.float32(1e-4)
    assert sched["beta_t"][1000] == np.float32(0.02)
    # t = 0 is the clean image: the lecture's last loop iteration is the identity.
    assert sched["sqrtab"][0] == 1 and sched["sqrtmab"][0] == 0
    assert sched["oneover_sqrtalpha"][0] == 1 and sched["mab_over_sqrtmab"][0] == 0
    assert sched["sqrt_beta_t"][0] == 0 and sched["posterior_std"][1] == 0
    # alphabar_T is tiny: x_T is (nearly) pure noise.
    assert 3e-5 < sched["alphabar_t"][1000] < 5e-5


def test_single_step_schedule():
    sched = ddpm_schedule(1e-4, 0.02, 1)
    np.testing.assert_allclose(sched["beta_t"], [0.0, 1e-4], rtol=1e-6)


def test_cosine_tables_match_reference():
    T, s = 1000, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = [min(1 - (f[t] / f[0]) / (f[t - 1] / f[0]), 0.999) for t in range(1, T + 1)]
    ref = reference_tables(betas)
    sched = ddpm_schedule(T=T, kind="cosine")
    for key in SCHEDULE_KEYS:
        np.testing.assert_allclose(sched[key], ref[key], rtol=5e-6, atol=1e-7, err_msg=key)
    assert sched["beta_t"].max() == np.float32(0.999)
    # The cosine schedule destroys information more slowly than the linear one.
    linear = ddpm_schedule(1e-4, 0.02, T)
    assert sched["alphabar_t"][500] > linear["alphabar_t"][500]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta1": 0.02, "beta2": 1e-4, "T": 1000}, "beta1 must be smaller than beta2"),
        ({"beta1": 0.02, "beta2": 0.02, "T": 1000}, "beta1 must be smaller than beta2"),
        ({"beta1": 0.0, "beta2": 0.02, "T": 1000}, "beta1 must be a number strictly between 0 and 1"),
        ({"beta1": 1e-4, "beta2": 1.0, "T": 1000}, "beta2 must be a number strictly between 0 and 1"),
        ({"beta1": -1e-4, "beta2": 0.02, "T": 1000}, "beta1"),
        ({"beta1": 1e-4, "beta2": 0.02, "T": 0}, "T must be at least 1"),
        ({"beta1": 1e-4, "beta2": 0.02, "T": 10.5}, "T must be an integer"),
        ({"beta1": 1e-4, "beta2": 0.02, "T": 10, "kind": "quadratic"}, "Unknown schedule kind"),
        ({"beta1": 0.5, "beta2": 0.6, "T": 1000}, "destroys the signal: alphabar_T = 0 "),
        ({"beta1": 0.01, "beta2": 0.2, "T": 1000}, r"alphabar_T = 1\.01e-49 is below 1e-20"),
    ],
)
def test_invalid_schedules_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddpm_schedule(**kwargs)


def test_the_signal_limit_keeps_every_usual_schedule():
    """Ho et al.'s and Nichol and Dhariwal's schedules stay well above MIN_ALPHABAR."""
    from keras_ddpm.schedule import MIN_ALPHABAR

    for kwargs in ({"T": 1000}, {"T": 1000, "kind": "cosine"}, {"T": 2, "kind": "cosine"}):
        assert ddpm_schedule(**kwargs)["alphabar_t"][-1] > 1e6 * MIN_ALPHABAR
