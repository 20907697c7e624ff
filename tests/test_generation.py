"""The reverse process (keras_ddpm.generation) and sampling arguments, with analytic networks."""
import numpy as np
import pytest
import keras
from keras import ops

from keras_ddpm import DiffusionModel, ddpm_schedule, generation, plotting, sampling, sampling_api
from keras_ddpm.calibration import Calibration
from keras_ddpm.gaussian_start import GaussianStart

SHAPE = (8, 8, 1)
K = 3  # Classes of the conditional analytic network; K is "no class".


class AnalyticConditional(keras.layers.Layer):
    """eps(x_t, t, label) = 0.3 x_t (1 + t) + 0.1 label: no weights, known guidance."""

    def call(self, inputs):
        x_t, t, label = inputs
        label = ops.reshape(ops.cast(label, "float32"), (-1, 1, 1, 1))
        return 0.3 * x_t * (1.0 + ops.reshape(t, (-1, 1, 1, 1))) + 0.1 * label


class AnalyticNoise(keras.layers.Layer):
    def call(self, inputs):
        x_t, t = inputs
        return 0.3 * x_t * (1.0 + ops.reshape(t, (-1, 1, 1, 1)))


def analytic_model(T=20, conditional=False, noise_offset=0.0):
    inputs = [keras.Input(SHAPE), keras.Input((1,))]
    if conditional:
        inputs.append(keras.Input((1,), dtype="int32"))
        network = keras.Model(inputs, AnalyticConditional()(inputs))
        return DiffusionModel(network, T=T, num_classes=K, noise_offset=noise_offset)
    return DiffusionModel(keras.Model(inputs, AnalyticNoise()(inputs)), T=T,
                          noise_offset=noise_offset)


def guided_eps(T, w):
    """The guided noise estimate of the conditional analytic model, written out."""

    def denoise(x_t, t, labels):
        mix = K + w * (ops.cast(labels, "float32") - K)
        return (0.3 * x_t * (1.0 + ops.reshape(ops.cast(t, "float32") / T, (-1, 1, 1, 1)))
                + 0.1 * ops.reshape(mix, (-1, 1, 1, 1)))

    return denoise


@pytest.mark.parametrize("name", ["dpm++", "heun", "ddim"])
def test_labels_and_guidance_reach_every_sampler(name):
    T, w, labels = 20, 2.5, np.array([0, 2, 1], np.int32)
    model = analytic_model(T, conditional=True)
    images = model.sample(3, steps=5, sampler=name, labels=labels, guidance_scale=w, seed=1)
    sampler = sampling.get_sampler(name)
    process = generation.ReverseProcess(guided_eps(T, w), SHAPE, model.tables)
    plan = generation.make_plan(sampler, model.tables, 5)
    expected = process.run(3, sampler, plan, 1, conditions={"labels": labels})
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,resample", [("dpm++", 1), ("heun", 2), ("euler", 1)])
def test_inpainting_keeps_known_pixels_with_any_sampler(name, resample):
    model = analytic_model()
    images = np.random.default_rng(0).uniform(-1, 1, (2,) + SHAPE).astype("float32")
    mask = np.ones(SHAPE[:2])
    mask[2:6, 2:6] = 0
    out = model.inpaint(images, mask, steps=4, sampler=name, seed=3, resample=resample)
    keep = np.broadcast_to(mask[None, :, :, None] == 1, images.shape)
    np.testing.assert_array_equal(out[keep], images[keep])
    assert np.all(np.isfinite(out)) and np.abs(out[~keep] - images[~keep]).mean() > 0.05
    # Nothing known: plain sampling with the same sampler.
    np.testing.assert_array_equal(
        model.inpaint(images, np.zeros(SHAPE[:2]), steps=4, sampler=name, seed=3),
        model.sample(2, steps=4, sampler=name, seed=3),
    )


def test_frames_say_which_timestep_was_sampled():
    model = analytic_model(T=100)
    _, frames = model.sample(1, steps=4, frames=np.array([100, 60, 0]), seed=0)
    assert sorted(frames) == [0, 60, 100]
    assert frames.sampled == {100: 100, 60: 50, 0: 0}
    figure = plotting.plot_frames(frames)
    assert [axes.get_title() for axes in figure.axes] == ["t = 100", "t = 50", "t = 0"]
    # Heun: a frame is taken after the correction at its timestep, not the Euler guess.
    _, heun_frames = model.sample(1, steps=3, sampler="heun", frames=[50], seed=0)
    _, plain = model.sample(1, steps=3, sampler="heun", frames=[50, 49], seed=0)
    t = heun_frames.sampled[50]
    assert t < 50 and heun_frames.sampled == {50: t}
    np.testing.assert_array_equal(heun_frames[50], plain[50])


@pytest.mark.parametrize("name, clipped", [("ddim", True), ("ddpm", False)])
def test_final_denoising_is_tweedies_step_on_the_finished_images(name, clipped):
    """denoise_at=s: x <- (sqrt(ab_s) x - sqrt(1 - ab_s) eps(sqrt(ab_s) x, s)) / sqrt(ab_s), with
    the run's labels and guidance, clipped as the sampler clips; the frame at 0 is the result."""
    T, w, s, labels = 20, 2.5, 4, np.array([0, 2, 1], np.int32)
    model = analytic_model(T, conditional=True)
    options = dict(steps=None if name == "ddpm" else 5, sampler=name, labels=labels,
                   guidance_scale=w, seed=1)
    finished = model.sample(3, **options).astype(np.float64)
    denoised, frames = model.sample(3, denoise_at=s, frames=[0], **options)
    ab = float(np.asarray(model.tables["alphabar_t"], np.float64)[s])
    x_t = np.sqrt(ab) * finished
    mix = (K + w * (labels - K)).reshape(-1, 1, 1, 1)
    eps = 0.3 * x_t * (1.0 + s / T) + 0.1 * mix
    expected = (x_t - np.sqrt(1.0 - ab) * eps) / np.sqrt(ab)
    if clipped:
        expected = np.clip(expected, -1.0, 1.0)
    assert np.abs(expected - finished).max() > 0.01  # The step changes the images.
    np.testing.assert_allclose(denoised, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(frames[0], denoised)


def test_final_denoising_leaves_inpaintings_known_pixels_alone():
    model = analytic_model()
    images = np.random.default_rng(0).uniform(-1, 1, (2,) + SHAPE).astype("float32")
    mask = np.ones(SHAPE[:2])
    mask[2:6, 2:6] = 0
    keep = np.broadcast_to(mask[None, :, :, None] == 1, images.shape)
    plain = model.inpaint(images, mask, steps=4, seed=3)
    denoised = model.inpaint(images, mask, steps=4, seed=3, denoise_at=2)
    np.testing.assert_array_equal(denoised[keep], images[keep])
    assert np.abs(denoised[~keep] - plain[~keep]).max() > 1e-3


@pytest.mark.parametrize("denoise_at", [0, 21, -1, 2.5, True, "3"])
def test_denoise_at_must_be_a_timestep(denoise_at):
    with pytest.raises(ValueError, match=r"denoise_at must be a timestep in 1\.\.20"):
        analytic_model(T=20).sample(1, steps=4, denoise_at=denoise_at)


def test_the_compiled_loop_is_cached_by_sampler_object():
    process = generation.ReverseProcess(lambda x_t, t: 0 * x_t, SHAPE, ddpm_schedule(T=10))
    assert process.loop(sampling.DDIMSampler(0.5)) is process.loop(sampling.DDIMSampler(0.5))
    assert process.loop(sampling.DDIMSampler(0.5)) is not process.loop(sampling.DDIMSampler(0.0))
    assert process.loop(sampling.EulerSampler()) is not process.loop(sampling.HeunSampler())
    assert process.loop(sampling.EulerSampler()) is not process.loop(sampling.EulerSampler(), 2)


def test_one_trace_serves_every_chunk_size_and_number_of_steps():
    """The loop is traced once (the denoiser's Python code runs once per trace), then
    runs at other batch sizes, chunk sizes and step counts with the same images as a
    process that traces afresh for each of them."""
    traces = []

    def denoise(x_t, t):
        traces.append(tuple(x_t.shape))
        return 0.3 * x_t * (1.0 + ops.reshape(ops.cast(t, x_t.dtype) / 10, (-1, 1, 1, 1)))

    def run(process, n, steps, batch_size=None):
        sampler = sampling.DDIMSampler(0.5)
        plan = generation.make_plan(sampler, process.schedule, steps)
        return process.run(n, sampler, plan, seed=3, batch_size=batch_size)

    process = generation.ReverseProcess(denoise, SHAPE, ddpm_schedule(T=10))
    calls = [(2, 5, None), (3, 5, None), (2, 10, None), (5, 7, 2)]  # the last: chunks 2, 2, 1
    images = [run(process, *call) for call in calls]
    assert len(traces) == 1 and traces[0][0] is None, traces
    for call, got in zip(calls, images):
        fresh = generation.ReverseProcess(denoise, SHAPE, ddpm_schedule(T=10))
        np.testing.assert_array_equal(got, run(fresh, *call))


def test_seed_layout():
    """x_T of chunk c comes from (seed, c (S + 1)); step i's k-th draw from (seed + k, c (S + 1) + 1 + i)."""
    sched = ddpm_schedule(T=10)
    process = generation.ReverseProcess(lambda x_t, t: 0 * x_t, SHAPE, sched)
    sampler = sampling.DDIMSampler(0.0, clip_x0=False)
    plan = generation.make_plan(sampler, sched, 4, frames=[10])
    _, frames = process.run(3, sampler, plan, seed=9, batch_size=2)
    for chunk, rows in ((0, slice(0, 2)), (1, slice(2, 3))):
        x_T = sampling.stateless_normal((rows.stop - rows.start,) + SHAPE,
                                        ops.convert_to_tensor([9, chunk * 5], "int32"))
        np.testing.assert_array_equal(frames[10][rows], ops.convert_to_numpy(x_T))
    assert ops.convert_to_numpy(generation.noise_seed(9, 1, 4, step=2, draw=1)).tolist() == [10, 8]


@pytest.mark.parametrize("sampler, start", [("ddpm", None), ("ddim", None), ("ddim", 12)])
def test_a_model_trained_with_offset_noise_samples_with_it(sampler, start):
    """With `noise_offset=s` every noise draw of sampling (x_T or the start's, and each
    step's) gets s times a normal constant per image and channel: the analytic network is
    linear, so the images differ from the plain model's of the same seed by a constant per
    image and channel, and these constants spread as the offsets do."""
    images, first = {}, {}
    for noise_offset in (0.0, 0.5):
        model = analytic_model(noise_offset=noise_offset)
        if start is not None:  # A one-Gaussian start at t = 12 (mean 0, the noise's spread).
            model.calibration = Calibration(
                np.array([1, 20]), np.zeros((2, 1) + SHAPE), T=20,
                start=GaussianStart(start, 20, np.zeros((1,) + SHAPE), np.zeros((1, 1, 64)),
                                    np.zeros((1, 1)), np.zeros(1)))
        steps = 20 if sampler == "ddpm" else 8
        images[noise_offset], frames = model.sample(
            256, steps=steps, sampler=sampler, eta=1.0, seed=3, clip_x0=False, verbose=0,
            frames=[20])
        first[noise_offset], t = frames[20], frames.sampled[20]
    # The first images are the forward process's noise at their timestep: sqrt(1 - ab) s.
    offsets = (first[0.5] - first[0.0]).mean(axis=(1, 2))
    expected = 0.5 * np.sqrt(1.0 - ddpm_schedule(T=20)["alphabar_t"][t])
    assert abs(offsets.std() / expected - 1.0) < 0.2, (offsets.std(), expected)
    difference = images[0.5] - images[0.0]
    constants = difference.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(difference, np.broadcast_to(constants, difference.shape), atol=1e-4)
    spread, pixels = constants.std(), images[0.0].std()
    assert 0.1 * pixels < spread < 2.0 * pixels, (spread, pixels)


# --- argument checks (issue 11) ------------------------------------------------------------


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -1.0, 1.5, "0.5", True, None])
def test_eta_must_be_a_finite_number_in_0_1(eta):
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        analytic_model().sample(1, steps=4, eta=eta)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        sampling.DDIMSampler(eta=eta)


@pytest.mark.parametrize("clip_x0", ["no", 0, 1.0, "False"])
def test_clip_x0_must_be_a_bool(clip_x0):
    with pytest.raises(TypeError, match="clip_x0 must be True or False"):
        analytic_model().sample(1, steps=4, clip_x0=clip_x0)
    with pytest.raises(TypeError, match="clip_x0 must be True or False"):
        sampling.DPMSolverSampler(clip_x0=clip_x0)
    analytic_model().sample(1, steps=4, clip_x0=np.bool_(False))


@pytest.mark.parametrize("frames", ["1000", "20,0", [1.5], [[20, 0]]])
def test_frames_must_be_integer_timesteps(frames):
    with pytest.raises(TypeError, match="frames must be integer timesteps"):
        analytic_model().sample(1, steps=4, frames=frames)


@pytest.mark.parametrize("seed", [2**31 - 1, 2**40, -1, 1.5, True, "3"])
def test_seeds_outside_the_supported_range_are_refused(seed):
    with pytest.raises(ValueError, match="seed must be"):
        analytic_model().sample(1, steps=4, seed=seed)


def test_largest_seed_works_and_differs_from_its_residue():
    model = analytic_model()
    top = model.sample(1, steps=4, seed=2**31 - 2)
    assert np.all(np.isfinite(top))
    assert np.abs(top - model.sample(1, steps=4, seed=0)).max() > 0.01


def test_non_finite_samples_are_an_error():
    process = generation.ReverseProcess(lambda x_t, t: x_t * np.nan, SHAPE, ddpm_schedule(T=10))
    sampler = sampling.DDIMSampler(0.0, clip_x0=False)
    with pytest.raises(FloatingPointError, match="non-finite values"):
        process.run(2, sampler, generation.make_plan(sampler, process.schedule, 3), seed=0)


def test_cli_choices_are_the_library_constants():
    import argparse

    from keras_ddpm.cli import common, sampling_options

    assert sampling_options.SAMPLER_CHOICES == sampling.SAMPLERS
    assert sampling_options.SPACING_CHOICES == sampling.SPACINGS
    assert common.MAX_SEED == generation.MAX_SEED
    parser = argparse.ArgumentParser()
    sampling_options.add_sampling_arguments(parser)
    args = parser.parse_args(["--sampler", "dpm++", "--spacing", "logsnr"])
    kwargs = sampling_options.sampling_kwargs(args)
    assert (kwargs["sampler"], kwargs["spacing"]) == ("dpm++", "logsnr")


@pytest.mark.parametrize("module", [sampling, generation, sampling_api], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    """The examples of the sampling modules, executed (set-up: keras, np, ddpm_schedule)."""
    import doctest

    globs = dict(vars(module), keras=keras, np=np, ddpm_schedule=ddpm_schedule)
    result = doctest.testmod(module, globs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 8 and result.failed == 0


def test_sample_options_defaults_are_the_model_methods_defaults():
    """SampleOptions' defaults are those of DiffusionModel.sample and inpaint, field by field."""
    import dataclasses
    import inspect

    defaults = {field.name: field.default for field in dataclasses.fields(sampling_api.SampleOptions)}
    for method in (DiffusionModel.sample, DiffusionModel.inpaint):
        parameters = inspect.signature(method).parameters
        assert {name: parameters[name].default for name in defaults} == defaults, method
