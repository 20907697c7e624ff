"""The benchmarks' sampler texts, `NAME[:STEPS[:ETA]]`: parsed and named one way.

    >>> parse_sampler("ddim:50:1", 1000)
    ('ddim', 50, 1.0)
    >>> sampler_label(*parse_sampler("ddim:50:1", 1000))
    'ddim-50-eta1'
    >>> sampler_text_error("dpm++:20:1")
    "--samplers 'dpm++:20:1': an ETA in [0, 1] is DDIM's, e.g. ddim:50:1"
"""


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
