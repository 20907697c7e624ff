"""The quality benchmark: its judge's metrics on constructed inputs, and a quick end-to-end run."""
import pathlib
import sys

import numpy as np
import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
import shapes_judge  # noqa: E402
from keras_ddpm import data  # noqa: E402

# The judge of `quality.py --quick`: trained once here, then found in the cache by the script.
QUICK_JUDGE = quality.QUICK["judge"]

COLUMNS = ("| Row | Sampler | n | Valid rate | Worst attribute deviation | All within ±50% "
           "| Fréchet / floor | Train s | Sample s | Training |")


def one_hot(indices, classes):
    return np.eye(classes)[indices]


def test_combination_confidence_is_the_product_of_the_heads_and_ignores_none():
    shape = np.array([[0.9, 0.05, 0.05, 0.0], [0.1, 0.1, 0.1, 0.7]])
    color = one_hot([1, 3], 5)
    background = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    combinations, confidence = shapes_judge.combination_confidence([shape, color, background])
    np.testing.assert_array_equal(combinations, [[0, 1, 1], [0, 3, 0]])
    np.testing.assert_allclose(confidence, [0.9, 0.1 * 0.5])


def test_valid_mask_needs_confidence_and_a_known_combination():
    combinations = np.array([[0, 0, 0], [0, 0, 0], [2, 3, 1]])
    mask = shapes_judge.valid_mask(combinations, np.array([0.9, 0.89, 1.0]), {(0, 0, 0)})
    np.testing.assert_array_equal(mask, [True, False, False])


def test_attribute_frequencies_count_valid_samples_only():
    combinations = np.array([[0, 0, 0], [1, 1, 1], [1, 2, 1], [2, 3, 0]])
    frequencies = shapes_judge.attribute_frequencies(combinations, [True, True, True, False])
    np.testing.assert_allclose(frequencies["shape"], [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(frequencies["color"], [1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(frequencies["background"], [1 / 3, 2 / 3])
    # No valid sample: every frequency is 0, i.e. -100% from the data's.
    empty = shapes_judge.attribute_frequencies(combinations, [False] * 4)
    data_frequencies = {"shape": np.full(3, 1 / 3), "color": np.full(4, 0.25),
                        "background": np.full(2, 0.5)}
    assert shapes_judge.worst_deviation(empty, data_frequencies)[2] == -1.0


def test_worst_deviation_finds_the_largest_relative_error():
    data_frequencies = {"shape": np.full(3, 1 / 3), "color": np.full(4, 0.25),
                        "background": np.full(2, 0.5)}
    observed = {"shape": np.array([0.4, 0.3, 0.3]), "color": np.array([0.1, 0.3, 0.3, 0.3]),
                "background": np.array([0.6, 0.4])}
    name, value, deviation = shapes_judge.worst_deviation(observed, data_frequencies)
    assert (name, value) == ("color", "red")
    assert deviation == pytest.approx(-0.6)


def test_negative_images_are_in_range_and_unlike_the_real_ones():
    images, attributes = data.make_shapes_with_attributes(20, seed=3)
    real = np.asarray(data.to_model_range(images))
    negatives = shapes_judge.negative_images(real, attributes, seed=0)
    assert negatives.shape == real.shape and negatives.dtype == np.float32
    assert negatives.min() >= -1 and negatives.max() <= 1
    assert np.abs(negatives - real).mean(axis=(1, 2, 3)).min() > 0.02


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    """A cache folder holding the quick judge (trained here once, about 10 s)."""
    cache = tmp_path_factory.mktemp("quality_cache")
    shapes_judge.load_judge(QUICK_JUDGE, cache, log=lambda message: None)
    return cache


def test_judge_accepts_real_images_rejects_noise_and_real_vs_real_is_near_the_floor(quick_cache):
    judge = shapes_judge.load_judge(QUICK_JUDGE, quick_cache)
    n = 200
    reference = shapes_judge.reference_features(judge, QUICK_JUDGE, n, quick_cache)
    real = shapes_judge.real_images(QUICK_JUDGE, n)
    noise = np.random.default_rng(0).normal(size=real.shape).astype(np.float32)
    real_score = judge.score(real, **reference)
    noise_score = judge.score(noise, **reference)
    # The quick judge at seven seeds on an Intel Xeon (2026-11-26): valid 0.875-0.97, the
    # worst attribute within ±0.23, the Fréchet ratio 0.79-1.13. The bounds leave about 2x.
    assert real_score["valid_rate"] > 0.5  # the full judge scores about 0.99
    assert noise_score["valid_rate"] < 0.05
    assert 0.4 < real_score["frechet_ratio"] < 2.5
    assert noise_score["frechet_ratio"] > 20
    assert abs(real_score["worst"][2]) < 0.5


@pytest.mark.slow
def test_quick_mode_runs_end_to_end_and_prints_its_table_last(quick_cache, tmp_path, capsys):
    # In this process, as `python quality.py --quick` runs it: the judge, the training of
    # its row (`keras-ddpm train`, eagerly, in this process too), sampling and the table.
    quality.main(["--quick", "--cache-dir", str(quick_cache), "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("| ")  # the table is printed last
    table = out[out.index(COLUMNS):].splitlines()
    assert table[0] == COLUMNS
    rows = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert rows == ["real data", "naive", "naive"]
    assert "ddpm-20" in out and "ddim-5-eta1" in out
    assert (tmp_path / "naive_ddim-5-eta1.png").is_file()
    assert (tmp_path / "results.json").is_file()
    assert "1/1" in (tmp_path / "naive" / "train.log").read_text()  # its one training step
    import tensorflow as tf

    assert not tf.config.functions_run_eagerly()  # as before the run


def test_samples_option_scores_every_image_array_of_an_npz(quick_cache, tmp_path, capsys):
    n = 60
    real = data.make_shapes(n, seed=11)[0]  # uint8, as recipe_sweep.py writes them
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape).astype(np.float32)
    path = tmp_path / "made.npz"
    np.savez(path, **{"ddim-50": real, "noise": noise, "labels": np.zeros(n)})
    quality.main(["--quick", "--samples", str(path), "--n", str(n), "--cache-dir",
                  str(quick_cache), "--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    table = out[out.index(COLUMNS):].splitlines()
    rows = {line.split(" | ")[1]: line.split(" | ") for line in table[2:]}
    assert set(rows) == {"-", "ddim-50", "noise"}  # real data, then the two image arrays
    # The quick judge (tiny, 5 epochs) accepts about 0.9 of real images, rejects noise.
    assert float(rows["ddim-50"][3]) > 0.25 > 0.05 > float(rows["noise"][3])
    assert float(rows["ddim-50"][6]) < 3 < 20 < float(rows["noise"][6])  # Fréchet / floor
    assert (tmp_path / "out" / "made_noise.png").is_file()


def test_a_conditional_model_is_sampled_with_every_class_at_each_guidance_scale():
    args = quality.parse_args(["--guidance-scales", "1", "2.5", "--n", "300",
                               "--attention-guidance", "0", "0.5"])

    def conditions(num_classes):
        return quality.sampling_conditions(num_classes, args.n, args.seed, args.guidance_scales,
                                           args.attention_guidance, sep=" ")

    assert conditions(None) == [("", {}), (" pag0.5", {"attention_guidance": 0.5})]
    denoised = quality.sampling_conditions(None, 10, 0, [1.0], [0.0], sep=" ", denoise_at=[0, 50])
    assert denoised == [("", {}), (" dn50", {"denoise_at": 50})]
    with pytest.raises(SystemExit):
        quality.parse_args(["--denoise-at", "-1"])
    both = conditions(3)
    assert [suffix for suffix, _ in both] == [" w1", " w1 pag0.5", " w2.5", " w2.5 pag0.5"]
    assert [options["guidance_scale"] for _, options in both] == [1.0, 1.0, 2.5, 2.5]
    assert [options.get("attention_guidance") for _, options in both] == [None, 0.5, None, 0.5]
    labels = both[0][1]["labels"]
    assert labels.shape == (300,) and set(labels.tolist()) == {0, 1, 2}
    for _, options in both[1:]:  # the same labels at every scale
        assert np.array_equal(labels, options["labels"])
    assert np.bincount(labels).tolist() == [100] * 3  # equal numbers, as in `shapes`
    assert not np.array_equal(labels, np.sort(labels))  # in a random order
    assert quality.parse_args([]).attention_guidance == [0.0]  # off by default


def test_sampler_texts_give_name_steps_and_ddim_eta():
    assert quality.parse_sampler("ddpm", 1000) == ("ddpm", 1000, 0.0)
    assert quality.parse_sampler("ddim:50", 1000) == ("ddim", 50, 0.0)
    assert quality.parse_sampler("ddim:50:1", 1000) == ("ddim", 50, 1.0)
    assert quality.sampler_label(*quality.parse_sampler("ddim:50:0.5", 1000)) == "ddim-50-eta0.5"
    assert quality.sampler_label("dpm++", 20, 0.0) == "dpm++-20"
    assert quality.STOCHASTIC_DDIM in quality.default_samplers()
    for bad in ("ddim:fifty", "dpm++:20:1", "ddim:50:2"):  # refused before any training
        with pytest.raises(SystemExit):
            quality.parse_args(["--samplers", bad])
