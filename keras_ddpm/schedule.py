"""Noise schedules: the lecture's `ddpm_schedule` tables, linear and cosine.

Every table has length `T + 1` and is indexed by the timestep `t = 0..T`, so
`sched["sqrtab"][t]` is the value at step `t` exactly as the lecture writes it.
Index 0 is the clean image: `beta_0 = 0`, `alphabar_0 = 1`. With that
convention the lecture's reverse loop `for i in range(T, -1, -1)` is exact: its
last iteration (`i = 0`) is the identity.

The tables are computed in float64 and returned as float32 NumPy arrays.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020).
    Nichol and Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
    arXiv:2102.09672 (2021).
"""

import math

import numpy as np

SCHEDULE_KINDS = ("linear", "cosine")

SCHEDULE_KEYS = (
    "beta_t",
    "alpha_t",
    "alphabar_t",
    "sqrtab",
    "sqrtmab",
    "oneover_sqrtalpha",
    "mab_over_sqrtmab",
    "sqrt_beta_t",
    "posterior_variance",
    "posterior_std",
)

COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999

# Smallest alphabar_T accepted: below it sqrt(alphabar_t) loses the signal in
# float32 (the predicted clean image divides by it) and samples become NaN.
MIN_ALPHABAR = 1e-20


def validate_schedule_args(beta1, beta2, T, kind="linear"):
    """Raise `ValueError` naming the problem if the schedule scalars are invalid.

    Args:
        beta1: float. Variance of the first forward step, `beta_1`.
        beta2: float. Variance of the last forward step, `beta_T`.
        T: int. Number of diffusion steps.
        kind: str. `"linear"` or `"cosine"`.

    Example:
    >>> validate_schedule_args(1e-4, 0.02, 1000)
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(
            f"Unknown schedule kind {kind!r}. Choose one of: "
            + ", ".join(repr(k) for k in SCHEDULE_KINDS)
            + "."
        )
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise ValueError(f"T must be an integer number of steps, got {T!r}.")
    if T < 1:
        raise ValueError(f"T must be at least 1, got T={T}.")
    if kind == "cosine":
        return  # The cosine schedule does not use beta1 and beta2.
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or not (
            0.0 < float(value) < 1.0
        ):
            raise ValueError(
                f"{name} must be a number strictly between 0 and 1, got "
                f"{name}={value!r}."
            )
    if not beta1 < beta2:
        raise ValueError(
            f"beta1 must be smaller than beta2 (the noise grows with t), got "
            f"beta1={beta1} and beta2={beta2}."
        )


def _linear_betas(beta1, beta2, T):
    """beta_1..beta_T spaced linearly from beta1 to beta2 (float64)."""
    return np.linspace(beta1, beta2, T, dtype=np.float64)


def _cosine_betas(T, offset=COSINE_OFFSET, max_beta=COSINE_MAX_BETA):
    """beta_1..beta_T of the cosine schedule (Nichol and Dhariwal 2021, eq. 17).

    alphabar(t) = f(t) / f(0) with f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2,
    beta_t = 1 - alphabar(t) / alphabar(t - 1), clipped at `max_beta`.
    """
    steps = np.arange(T + 1, dtype=np.float64)
    f = np.cos((steps / T + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    alphabar = f / f[0]
    betas = 1.0 - alphabar[1:] / alphabar[:-1]
    return np.minimum(betas, max_beta)


def ddpm_schedule(beta1=1e-4, beta2=0.02, T=1000, kind="linear"):
    """Precomputed DDPM tables, indexed by the timestep `t = 0..T`.

    With `alpha_t = 1 - beta_t` and `alphabar_t = prod_{s <= t} alpha_s`:

    | key                  | value at t                                   |
    | -------------------- | -------------------------------------------- |
    | `beta_t`             | beta_t (0 at t = 0)                          |
    | `alpha_t`            | 1 - beta_t                                   |
    | `alphabar_t`         | prod_{s=1..t} alpha_s (1 at t = 0)           |
    | `sqrtab`             | sqrt(alphabar_t)                             |
    | `sqrtmab`            | sqrt(1 - alphabar_t)                         |
    | `oneover_sqrtalpha`  | 1 / sqrt(alpha_t)                            |
    | `mab_over_sqrtmab`   | (1 - alpha_t) / sqrt(1 - alphabar_t) (0 at 0)|
    | `sqrt_beta_t`        | sqrt(beta_t)                                 |
    | `posterior_variance` | beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t) (0 at 0) |
    | `posterior_std`      | sqrt(posterior_variance)                     |

    The linear schedule has `beta_1 = beta1` and `beta_T = beta2`, as the
    lecture states (Ho et al. use 1e-4 and 0.02 with T = 1000). The cosine
    schedule ignores `beta1` and `beta2` and uses s = 0.008 with betas clipped
    at 0.999.

    Args:
        beta1: float. beta_1, strictly between 0 and 1 and below `beta2`.
        beta2: float. beta_T, strictly between 0 and 1.
        T: int. Number of diffusion steps, at least 1.
        kind: str. `"linear"` (the lecture's) or `"cosine"`.

    Returns:
        dict mapping each key above to a float32 array of shape `(T + 1,)`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 1000)
    >>> sched["sqrtab"].shape
    (1001,)
    >>> float(sched["beta_t"][1]), float(sched["beta_t"][1000])
    (9.999999747378752e-05, 0.019999999552965164)
    """
    validate_schedule_args(beta1, beta2, T, kind)
    T = int(T)
    if kind == "linear":
        betas = _linear_betas(float(beta1), float(beta2), T)
    else:
        betas = _cosine_betas(T)

    beta_t = np.concatenate([[0.0], betas])
    alpha_t = 1.0 - beta_t
    alphabar_t = np.cumprod(alpha_t)
    if alphabar_t[-1] < MIN_ALPHABAR:
        raise ValueError(
            f"This schedule destroys the signal: alphabar_T = {alphabar_t[-1]:.3g} is below "
            f"{MIN_ALPHABAR:g} (beta1={beta1}, beta2={beta2}, T={T}), which float32 cannot "
            "invert, so every sample would be NaN. Use smaller betas or fewer steps "
            "(Ho et al.: beta1=1e-4, beta2=0.02, T=1000 give alphabar_T = 4e-5)."
        )
    one_minus_alphabar = 1.0 - alphabar_t
    sqrtmab = np.sqrt(one_minus_alphabar)

    # Entries at t = 0 divide 0 by 0; they are defined as 0 (no noise).
    safe_sqrtmab = np.where(sqrtmab > 0.0, sqrtmab, 1.0)
    mab_over_sqrtmab = np.where(sqrtmab > 0.0, beta_t / safe_sqrtmab, 0.0)
    alphabar_prev = np.concatenate([[1.0], alphabar_t[:-1]])
    safe_denominator = np.where(one_minus_alphabar > 0.0, one_minus_alphabar, 1.0)
    posterior_variance = np.where(
        one_minus_alphabar > 0.0,
        beta_t * (1.0 - alphabar_prev) / safe_denominator,
        0.0,
    )

    tables = {
        "beta_t": beta_t,
        "alpha_t": alpha_t,
        "alphabar_t": alphabar_t,
        "sqrtab": np.sqrt(alphabar_t),
        "sqrtmab": sqrtmab,
        "oneover_sqrtalpha": 1.0 / np.sqrt(alpha_t),
        "mab_over_sqrtmab": mab_over_sqrtmab,
        "sqrt_beta_t": np.sqrt(beta_t),
        "posterior_variance": posterior_variance,
        "posterior_std": np.sqrt(posterior_variance),
    }
    return {key: tables[key].astype(np.float32) for key in SCHEDULE_KEYS}


LOSS_TARGETS = ("epsilon", "v", "x0")


def min_snr_weights(alphabar_t, gamma=5.0, prediction="epsilon"):
    """Min-SNR-gamma loss weights per timestep (Hang et al. 2023), as a table.

    With SNR_t = alphabar_t / (1 - alphabar_t), weighting the loss of the
    x0 prediction by min(SNR_t, gamma) balances the timesteps' conflicting
    gradients. The same weighting, expressed for each training target:

    | target      | weight                            |
    | ----------- | --------------------------------- |
    | `"epsilon"` | min(SNR_t, gamma) / SNR_t         |
    | `"v"`       | min(SNR_t, gamma) / (SNR_t + 1)   |
    | `"x0"`      | min(SNR_t, gamma)                 |

    At t = 0 (SNR infinite, never trained on) the weights take their limits:
    0, 0 and gamma.

    Args:
        alphabar_t: array `(T + 1,)`. The schedule's `alphabar_t` table.
        gamma: float > 0. The SNR cap (5 in the paper).
        prediction: str. The network's target: `"epsilon"`, `"v"` or `"x0"`.

    Returns:
        A float32 array `(T + 1,)`, indexed by the timestep.

    Example:
    >>> weights = min_snr_weights(ddpm_schedule()["alphabar_t"], 5.0, "epsilon")
    >>> float(weights[1000])  # Noisy steps (SNR < gamma) keep weight 1.
    1.0

    References:
        Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
        Strategy", arXiv:2303.09556 (2023).
    """
    if prediction not in LOSS_TARGETS:
        raise ValueError(f"prediction must be one of {LOSS_TARGETS}, got {prediction!r}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"min_snr_gamma must be a positive number, got {gamma!r}.")
    alphabar = np.asarray(alphabar_t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        snr = alphabar / (1.0 - alphabar)  # Infinite at t = 0.
        capped = np.minimum(snr, gamma)
        if prediction == "epsilon":
            weights = np.minimum(1.0, gamma / snr)  # = capped / snr, also at SNR 0.
        elif prediction == "v":
            weights = np.where(np.isinf(snr), 0.0, capped / (snr + 1.0))
        else:
            weights = capped
    return weights.astype(np.float32)
