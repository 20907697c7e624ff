"""Safe saving and loading of `.keras` files.

`save_model` writes to a temporary file beside the target and renames it over
the target only once it is complete, so a crash, a kill or a full disk during
saving leaves the previous file intact (never a truncated one). `atomic_path`
does the same for any file (checkpoints, `history.json`).

`load_model` loads with Keras' safe mode on and turns every way a file can be
wrong (missing, not a `.keras` file, truncated, damaged, carrying code) into
one clear error that says what to do. Models made by keras_ddpm never need
`safe_mode=False`.
"""

import contextlib
import glob
import json
import math
import os
import pathlib
import re
import shutil
import socket
import zipfile

import keras

@contextlib.contextmanager
def atomic_path(path, needed_bytes=0):
    """A temporary path beside `path` that replaces `path` once written.

    Write the file to the yielded path; when the `with` block ends without an
    error the file is flushed to disk and renamed over `path` in one step
    (`os.replace`). If the block raises, the temporary file is removed and
    `path` is left as it was. A process killed mid-write leaves a hidden
    `.tmp-<host>-<pid>-<name>` file behind, never a damaged `path`; the next
    write of `path` on that machine deletes it.

    Args:
        path: str or `pathlib.Path`. The file to write.
        needed_bytes: int. About how large the file will be: if the disk has
            less room, raise an `OSError` before writing anything.

    Yields:
        `pathlib.Path`: the temporary file, in the same folder and with the
        same name ending (`.keras`, `.weights.h5`...) as `path`.

    Example:
    >>> with atomic_path("runs/history.json") as temp:
    ...     temp.write_text("{}")
    """
    path = pathlib.Path(path)
    _remove_stale_temporaries(path)
    _check_free_space(path, needed_bytes)
    temp = path.with_name(f".tmp-{socket.gethostname()}-{os.getpid()}-{path.name}")
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
        _fsync_folder(path.parent)
    finally:
        temp.unlink(missing_ok=True)


def _check_free_space(path, needed_bytes):
    """Raise an OSError if the folder of `path` has less than `needed_bytes` free."""
    if not needed_bytes:
        return
    free = shutil.disk_usage(path.parent).free
    if free < needed_bytes:
        raise OSError(
            f"Not enough disk space to write {str(path)!r}: it needs about "
            f"{needed_bytes / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Nothing "
            "was written and the previous file is intact: free some space and try again."
        )


def _state_bytes(model):
    """About how many bytes the weights and optimizer state of `model` take on disk."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    data = sum(math.prod(variable.shape) * _itemsize(variable.dtype) for variable in variables)
    return int(data * 1.1) + 2**20  # Room for the file's own structure.


def _itemsize(dtype):
    """Bytes per element of a Keras dtype name ("float32": 4, "bfloat16": 2, "bool": 1)."""
    bits = re.search(r"\d+$", str(dtype))
    return int(bits.group()) // 8 if bits else 1


def _remove_stale_temporaries(path):
    """Delete temporary files for `path` left by killed processes of this machine."""
    if os.name != "posix":  # Elsewhere os.kill(pid, 0) is not a harmless probe.
        return
    prefix = f".tmp-{socket.gethostname()}-"
    for temp in path.parent.glob(f"{glob.escape(prefix)}*-{glob.escape(path.name)}"):
        pid = temp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            temp.unlink(missing_ok=True)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but is not ours.
        return True
    return True


def _fsync_folder(folder):
    """Flush a folder's entries (the rename) to disk, where the OS allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders.
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_model(model, path):
    """Save `model` to a `.keras` file without ever leaving a truncated file.

    `model.save` writes a temporary file in the same folder, which is then
    renamed over `path` (see `atomic_path`): a crash during saving keeps the
    previous `path` intact.

    Args:
        model: `keras.Model`. E.g. a `DiffusionModel`.
        path: str or `pathlib.Path`. Ends in `.keras`; its folder must exist.

    Returns:
        `pathlib.Path`: `path`.

    Example:
    >>> save_model(model, "runs/shapes/model.keras")
    PosixPath('runs/shapes/model.keras')
    """
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"A model file name must end in .keras, got {str(path)!r}.")
    with atomic_path(path, needed_bytes=_state_bytes(model)) as temp:
        model.save(temp)
    return path


def save_weights(model, path):
    """`model.save_weights(path)`, written atomically like `save_model`.

    The `.weights.h5` file holds the weights and the optimizer's state; a
    crash or a full disk while writing leaves the previous file intact.

    Args:
        model: `keras.Model`.
        path: str or `pathlib.Path`. Ends in `.weights.h5`.

    Returns:
        `pathlib.Path`: `path`.

    Example:
    >>> save_weights(model, "checkpoints/latest.weights.h5")
    PosixPath('checkpoints/latest.weights.h5')
    """
    path = pathlib.Path(path)
    with atomic_path(path, needed_bytes=_state_bytes(model)) as temp:
        model.save_weights(temp)
    return path


def load_model(path):
    """Load a `.keras` file with Keras' safe mode on, with clear errors.

    Refuses a file that carries Python code (a `Lambda` layer or a
    serialized lambda function), which would run on this machine while
    loading: keras_ddpm's own models never do. Importing `keras_ddpm`
    registers its layers and `DiffusionModel`, so no `custom_objects` are
    needed.

    Args:
        path: str or `pathlib.Path`. A file written by `save_model` or
            `model.save`.

    Returns:
        The loaded `keras.Model` (a `DiffusionModel` for keras_ddpm's files).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a `.keras` file, is truncated or damaged,
            carries code, or Keras cannot rebuild the model from it.

    Example:
    >>> model = load_model("runs/shapes/model.keras")
    >>> images = model.sample(4, steps=50)
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model file {str(path)!r} not found.")
    if path.is_dir() or path.suffix != ".keras":
        raise ValueError(
            f"{str(path)!r} is not a .keras file: give a model saved with "
            "keras_ddpm.saving.save_model or model.save('....keras') (e.g. the "
            "model.keras written by 'keras-ddpm train')."
        )
    config = _read_config(path)
    code = _code_objects(config)
    if code:
        raise ValueError(
            f"Refusing to load {str(path)!r}: it contains {', '.join(code)}, i.e. "
            "Python code that would run on this machine while loading. keras_ddpm's "
            "models never contain code. Only if you trust whoever made the file, load "
            "it yourself with keras.saving.load_model(path, safe_mode=False)."
        )
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(_corrupt_message(path, error)) from error
    except Exception as error:  # Keras' deserialization errors (TypeError, ValueError...).
        raise ValueError(
            f"Could not rebuild the model in {str(path)!r} "
            f"({type(error).__name__}: {_first_line(error)}). If it uses classes from "
            "another package, import that package first; if it comes from another "
            "version of keras_ddpm, load it with that version."
        ) from error


# A keras_ddpm model's config.json is tens of kB and about 15 levels deep; these
# bounds refuse crafted files (huge or deeply nested) before they exhaust memory or
# the recursion limit of Keras' deserialisation.
MAX_CONFIG_BYTES = 16 * 2**20
MAX_CONFIG_DEPTH = 100


def _read_config(path):
    """The model's `config.json` from a `.keras` archive, or a clear ValueError."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:
                raise ValueError(
                    f"Refusing to load {str(path)!r}: its config.json is {size:,} bytes, over "
                    f"the {MAX_CONFIG_BYTES:,} a model description needs; the file was not "
                    "written by Keras' model.save."
                )
            text = archive.read("config.json")
    except (zipfile.BadZipFile, KeyError, EOFError, OSError) as error:
        raise ValueError(_corrupt_message(path, error)) from error
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(_corrupt_message(path, error)) from error
    depth = _nesting_depth(config)
    if depth > MAX_CONFIG_DEPTH:
        raise ValueError(
            f"Refusing to load {str(path)!r}: its config.json is nested {depth} levels "
            f"deep, over the {MAX_CONFIG_DEPTH} a model description needs; the file was "
            "not written by Keras' model.save."
        )
    return config


def _nesting_depth(config):
    """Depth of nested lists and dicts in `config`, without recursion."""
    deepest, stack = 0, [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _corrupt_message(path, error):
    return (
        f"Could not load {str(path)!r}: the file is corrupt or truncated, not a "
        f"complete .keras archive ({type(error).__name__}: {_first_line(error)}). "
        "Save the model again, or use an earlier copy."
    )


def _first_line(error, max_length=200):
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= max_length else text[: max_length - 3] + "..."


def _code_objects(config):
    """Descriptions of the objects in a model config whose saved form is code."""
    if isinstance(config, list):
        return [found for child in config for found in _code_objects(child)]
    if not isinstance(config, dict):
        return []
    if config.get("class_name") == "Lambda":
        name = config.get("name") or config.get("config", {}).get("name")
        return [f"a Lambda layer {name!r}"]
    if config.get("class_name") == "__lambda__":
        return ["a serialized lambda function"]
    return [found for child in config.values() for found in _code_objects(child)]
