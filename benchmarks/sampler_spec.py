"""The benchmarks' sampler texts, `NAME[:STEPS[:ETA]]`: parsed and named one way.

    >>> parse_sampler("ddim:50:1", 1000)
    ('ddim', 50, 1.0)
    >>> sampler_label(*parse_sampler("ddim:50:1", 1000))
    'ddim-50-eta1'
    >>> sampler_text_error("dpm++:20:1")
    "--samplers 'dpm++:20:1': an ETA in [0, 1] is DDIM's, e.g. ddim:50:1"
    >>> [suffix for suffix, _ in sampling_conditions(3, 6, 0, [1.5, 2], [0, 0.5])]
    ['-w1.5', '-w1.5-pag0.5', '-w2', '-w2-pag0.5']
    >>> [suffix for suffix, _ in sampling_conditions(None, 6, 0, [2], [0.3], denoise_at=[0, 50])]
    ['-pag0.3', '-pag0.3-dn50']
"""
import numpy as np


def parse_sampler(text, T):
    """`"ddim:50"` -> `("ddim", 50, 0.0)`; `"ddim:50:1"` -> `("ddim", 50, 1.0)` (DDIM's
    eta); `"ddpm"` -> `("ddpm", T, 0.0)`."""
    name, _, rest = text.partition(":")
    steps, _, eta = rest.partition(":")
    return name, int(steps) if steps else T, float(eta) if eta else 0.0


def sampler_label(name, steps, eta):
    """The table's name of a sampler: `ddim-50`, or `ddim-50-eta1` for eta 1."""
    return f"{name}-{steps}" + (f"-eta{eta:g}" if eta else "")


def sampler_text_error(text):
    """None for a valid `NAME[:STEPS[:ETA]]`, else the one-line error to show: checked
    when the arguments are parsed, so that a typo costs no row's minutes of training."""
    try:
        name, _, eta = parse_sampler(text, 1)
    except ValueError:
        return f"--samplers {text!r}: expected NAME[:STEPS[:ETA]], e.g. ddim:50:1"
    if eta and (name != "ddim" or not 0.0 <= eta <= 1.0):
        return f"--samplers {text!r}: an ETA in [0, 1] is DDIM's, e.g. ddim:50:1"
    return None


def sampling_conditions(num_classes, n, seed, guidance_scales, attention_scales=(0.0,), sep="-",
                        denoise_at=(0,)):
    """`(suffix, sample options)` for every guidance scale, attention-guidance scale and
    final denoising timestep.

    An unconditional model (`num_classes` None) gets only the attention-guidance
    and denoising entries; a conditional one samples every class in equal numbers,
    in a random order drawn from `seed` (as `shapes` draws its labels), with each
    classifier-free `guidance_scales` entry. An attention-guidance scale or a
    `denoise_at` of 0 is off (no suffix)."""
    attention = [(f"{sep}pag{scale:g}", {"attention_guidance": scale}) if scale else ("", {})
                 for scale in attention_scales]
    denoising = [(f"{sep}dn{t}", {"denoise_at": t}) if t else ("", {}) for t in denoise_at]
    variants = [(a + d, {**a_options, **d_options})
                for a, a_options in attention for d, d_options in denoising]
    if num_classes is None:
        return variants
    labels = np.random.default_rng(seed).permutation(np.arange(n) % num_classes)
    return [(f"{sep}w{scale:g}{suffix}", {"labels": labels, "guidance_scale": scale, **options})
            for scale in guidance_scales for suffix, options in variants]
