"""The dtype policy that computes fastest on this machine: `precision="auto"`.

`mixed_bfloat16` computes in bfloat16 with float32 weights, output and loss. It
is faster where the hardware multiplies bfloat16 natively, and much slower where
it is emulated (5-8x on an AVX-512 CPU without BF16 units, see BENCHMARKS.md).
`auto_precision()` picks it on

- a GPU with bfloat16 tensor cores: NVIDIA compute capability 8.0 or higher
  (A100, RTX 30xx, L4, H100, ...), and on TPUs;
- a CPU whose flags (`/proc/cpuinfo`, `lscpu`) include `avx512_bf16` or
  `amx_bf16` (Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later),
  under the TensorFlow backend, whose oneDNN kernels use those units,

and `float32` everywhere else: on a CPU under JAX, XLA's CPU kernels train the
lecture's network slower in bfloat16 than in float32 even with AMX (0.80x on a
Sapphire Rapids-class Xeon, BENCHMARKS.md). Detection asks the active Keras
backend for its GPUs and name and reads `/proc/cpuinfo`; all three can be
passed in instead, which is how the tests mock any kind of machine.

Example:
>>> auto_precision(cpu_flags={"avx2", "avx512_bf16"}, gpus=[], backend="tensorflow")
'mixed_bfloat16'
>>> auto_precision(cpu_flags={"avx2"}, gpus=[])
'float32'
"""

import contextlib

import keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
# A TPU computes in bfloat16 natively; it is reported as this capability.
TPU = (99, 0)


def read_cpu_flags(path="/proc/cpuinfo"):
    """The feature flags of this machine's CPU, as listed in `path`.

    Args:
        path: str. A Linux `cpuinfo` file; a missing file (macOS, Windows)
            gives no flags.

    Returns:
        A `frozenset` of lower-case flag names, e.g. `{"avx2", "fma", ...}`.

    Example:
    >>> "avx512_bf16" in read_cpu_flags()  # doctest: +SKIP
    False
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                # x86 says "flags", ARM "Features".
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.lower().split())
    except OSError:
        pass
    return frozenset()


def local_gpus():
    """The bfloat16 capability of each accelerator the Keras backend sees.

    Returns:
        A list of `(major, minor)` CUDA compute capabilities, one per local
        GPU (`(0, 0)` where the backend does not say; `TPU` for a TPU core);
        empty on a CPU-only machine.

    Example:
    >>> local_gpus()  # doctest: +SKIP
    [(9, 0)]
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [device for device in jax.local_devices() if device.platform != "cpu"]
        return [
            TPU if device.platform == "tpu"
            else _capability(getattr(device, "compute_capability", None))
            for device in devices
        ]
    if backend == "tensorflow":
        import tensorflow as tf

        return [
            _capability(tf.config.experimental.get_device_details(gpu).get("compute_capability"))
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    return []


def _capability(value):
    """`(major, minor)` from `"8.6"`, `(8, 6)` or None (unknown: `(0, 0)`)."""
    if value is None:
        return (0, 0)
    if isinstance(value, str):
        major, _, minor = value.partition(".")
        return (int(major), int(minor or 0))
    return tuple(int(part) for part in value)[:2]


def bfloat16_support(cpu_flags=None, gpus=None, backend=None):
    """Whether this machine computes bfloat16 natively and fast, and why.

    Training runs on the GPUs when there are any, so then they alone decide
    (all of them must have bfloat16 units); otherwise the CPU's flags do,
    under the TensorFlow backend only (see the module's docstring).

    Args:
        cpu_flags: iterable of str, or None. The CPU's feature flags; None
            reads them with `read_cpu_flags()`.
        gpus: list of `(major, minor)` compute capabilities, or None. The
            local GPUs; None asks the Keras backend (`local_gpus()`).
        backend: str or None. The Keras backend's name; None: the active one.

    Returns:
        A tuple `(native, reason)`: a bool, and a few words for a log line.

    Example:
    >>> bfloat16_support(cpu_flags=["avx2"], gpus=[(9, 0), (9, 0)])
    (True, '2 GPU(s) with compute capability >= 8.0')
    >>> bfloat16_support(cpu_flags=["amx_bf16"], gpus=[], backend="jax")
    (False, 'CPU with amx_bf16, slower in bfloat16 than float32 under jax')
    """
    gpus = local_gpus() if gpus is None else [_capability(gpu) for gpu in gpus]
    if gpus:
        if all(gpu >= BF16_MIN_COMPUTE_CAPABILITY for gpu in gpus):
            return True, f"{len(gpus)} GPU(s) with compute capability >= 8.0"
        return False, f"{len(gpus)} GPU(s), not all with compute capability >= 8.0"
    flags = read_cpu_flags() if cpu_flags is None else frozenset(f.lower() for f in cpu_flags)
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    backend = keras.backend.backend() if backend is None else backend
    if found and backend != "tensorflow":
        found = " and ".join(found)
        return False, f"CPU with {found}, slower in bfloat16 than float32 under {backend}"
    if found:
        return True, f"CPU with {' and '.join(found)}"
    return False, "CPU without avx512_bf16 or amx_bf16"


def auto_precision(cpu_flags=None, gpus=None, backend=None):
    """The dtype policy `precision="auto"` means on this machine.

    Args:
        cpu_flags, gpus, backend: see `bfloat16_support`.

    Returns:
        `"mixed_bfloat16"` where the hardware computes bfloat16 natively,
        `"float32"` elsewhere.

    Example:
    >>> auto_precision(cpu_flags=[], gpus=[(7, 0)])  # A V100: no bfloat16 units.
    'float32'
    >>> keras.config.set_dtype_policy(auto_precision())  # doctest: +SKIP
    """
    native, _ = bfloat16_support(cpu_flags=cpu_flags, gpus=gpus, backend=backend)
    return "mixed_bfloat16" if native else "float32"


def resolve_precision(name, cpu_flags=None, gpus=None, backend=None):
    """A Keras dtype policy name from a precision option: `"auto"` or a policy.

    Args:
        name: str. `"auto"` or one of `PRECISIONS`.
        cpu_flags, gpus, backend: used for `"auto"` only, see `bfloat16_support`.

    Returns:
        str. The policy name, e.g. `"float32"`.

    Example:
    >>> resolve_precision("mixed_float16")
    'mixed_float16'
    >>> resolve_precision("auto", cpu_flags=["amx_bf16"], gpus=[], backend="tensorflow")
    'mixed_bfloat16'
    """
    if name == AUTO:
        return auto_precision(cpu_flags=cpu_flags, gpus=gpus, backend=backend)
    if name not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {name!r}: choose {AUTO!r} or one of {', '.join(PRECISIONS)}."
        )
    return name


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras' global dtype policy to `name` inside the block, then restores it.

    Example:
    >>> with dtype_policy("mixed_bfloat16"):
    ...     layer = keras.layers.Dense(2)
    >>> layer.dtype_policy.name
    'mixed_bfloat16'
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
