"""The benchmarks' sampler texts, `NAME[:STEPS[:ETA]]`: parsed and named one way.

    >>> parse_sampler("ddim:50:1", 1000)
    ('ddim', 50, 1.0)
    >>> sampler_label(*parse_sampler("ddim:50:1", 1000))
    'ddim-50-eta1'
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
