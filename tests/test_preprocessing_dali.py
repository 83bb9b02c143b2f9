"""AG-DS-DALI-001 on the CPU: the pipeline's parameters and shard arithmetic, the loader
choice, skip reasons; and, where DALI is installed (it runs CPU-only pipelines without a
GPU), the real pipeline: evaluation output against torchvision, labels, sharding, whole
training batches, layouts, the in-memory (.npz) source."""
from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from handlers.preprocessing.dali_spec import (PipelineSpec, batches_per_shard, full_batches, images_per_epoch,
                                              shard_bounds, shard_sizes)

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI not installed (pip install nvidia-dali-cuda130)")
CLASSES = ["NORMAL", "PNEUMONIA"]


# ------------------------------------------------------------------ arithmetic, no DALI

def test_shards_split_like_dali_and_differ_by_at_most_one():
    assert [shard_bounds(9, s, 2) for s in range(2)] == [(0, 4), (4, 9)]
    assert shard_sizes(10, 3) == [3, 3, 4]
    for n in range(0, 50):
        for shards in (1, 2, 3, 4, 8):
            sizes = shard_sizes(n, shards)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_batches_every_rank_has_in_full():
    # 9 images, 2 shards of 4 and 5, batch 2: each yields 3 batches (padded); 2 are whole everywhere
    assert batches_per_shard(9, 2, 2) == 3
    assert full_batches(9, 2, 2) == 2
    assert images_per_epoch(9, 2, 2, train=True) == 8
    assert images_per_epoch(9, 2, 2, train=False) == 9
    assert full_batches(5, 1, 8) == 0 and batches_per_shard(0, 2, 4) == 0


def test_spec_checks_its_arguments():
    with pytest.raises(ValueError, match="decoder"):
        PipelineSpec(224, 8, True, decoder="gpu")
    with pytest.raises(ValueError, match="shard_id"):
        PipelineSpec(224, 8, True, shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="decoder: cpu"):
        PipelineSpec(224, 8, True, device_id=None)
    spec = PipelineSpec(224, 8, True, seed=3, shard_id=1, num_shards=2)
    assert spec.mean_255 == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert spec.layout == "CHW" and replace(spec, channels_last=True).layout == "HWC"
    # augmentation differs per rank, the reader's shuffle is shared
    assert spec.pipeline_seed != replace(spec, shard_id=0).pipeline_seed and spec.seed == 3


# ------------------------------------------------------------------ loader choice

class _Placement:
    def __init__(self, cuda: bool):
        import torch
        self.is_cuda, self.device = cuda, torch.device("cuda", 0) if cuda else torch.device("cpu")
        self.amp_dtype, self.channels_last = None, False


def test_loader_auto_takes_the_dataloader_on_a_cpu():
    from handlers.training.loaders import choose_loader
    choice = choose_loader("auto", _Placement(False), available=(True, ""))
    assert choice.name == "dataloader" and choice.factory is None and choice.note is None


def test_loader_auto_on_a_gpu_without_dali_says_why_and_how_to_install(monkeypatch):
    from handlers.training import loaders
    monkeypatch.setattr(loaders, "detected_cuda_major", lambda: "12")
    choice = loaders.choose_loader("auto", _Placement(True), available=(False, "NVIDIA DALI is not installed (nvidia)"))
    assert choice.name == "dataloader"
    assert "NVIDIA DALI is not installed" in choice.note and "pip install nvidia-dali-cuda120" in choice.note


def test_loader_auto_on_a_gpu_with_dali_takes_dali():
    from handlers.training.loaders import choose_loader
    choice = choose_loader("auto", _Placement(True), available=(True, ""))
    assert choice.name == "dali" and choice.factory is not None and choice.note is None


def test_loader_dali_without_dali_is_an_error_with_the_install_command(monkeypatch):
    from handlers.ml.errors import DeviceError
    from handlers.training import loaders
    monkeypatch.setattr(loaders, "detected_cuda_major", lambda: "13")
    with pytest.raises(DeviceError) as caught:
        loaders.choose_loader("dali", _Placement(False), available=(False, "NVIDIA DALI is not installed (nvidia)"))
    assert "loader: dali, but NVIDIA DALI is not installed" in caught.value.message
    assert "pip install nvidia-dali-cuda130" in caught.value.hint


@pytest.mark.parametrize("major, wheel", [("12", "nvidia-dali-cuda120"), ("13", "nvidia-dali-cuda130"),
                                          ("14", "nvidia-dali-cuda130"), ("11", "nvidia-dali-cuda120"),
                                          (None, "nvidia-dali-cuda130")])
def test_install_hint_names_the_wheel_of_the_cuda_major(major, wheel):
    from atlas.probe import dali_install_hint
    assert f"pip install {wheel} " in dali_install_hint(major)


def test_the_planner_skip_names_the_wheel_for_this_machine():
    from atlas.planner import StepFacts, decide
    from atlas.probe import Probe
    probe = Probe(torch_cuda="12.8")
    decision = decide("AG-DS-DALI-001", StepFacts(requires=("cuda", "dali")), {}, probe.capabilities(),
                      hints=probe.hints())
    assert decision.action == "skip"
    assert decision.reason == "no CUDA device; NVIDIA DALI not installed"
    assert "pip install nvidia-dali-cuda120" in decision.hint


def test_the_step_is_skipped_without_dali_or_a_gpu(tmp_path, monkeypatch):
    from atlas.handler import Context
    from handlers.preprocessing import dali_loader
    from handlers.preprocessing.input_pipeline import DaliParams, InputPipeline
    ctx = Context("AG-DS-DALI-001", DaliParams(), {}, tmp_path, tmp_path, {"data": {}})
    monkeypatch.setattr(dali_loader, "dali_available", lambda: (False, "NVIDIA DALI is not installed (nvidia)"))
    result = InputPipeline().run(ctx)
    assert result.status == "skipped" and "NVIDIA DALI is not installed" in result.message
    assert "pip install nvidia-dali-cuda1" in result.hint
    monkeypatch.setattr(dali_loader, "dali_available", lambda: (True, ""))
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        result = InputPipeline().run(ctx)
        assert result.status == "skipped" and result.message.startswith("no CUDA device")


# ------------------------------------------------------------------ the real pipeline (CPU-only DALI)

@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """19 synthetic 512x512 grayscale JPEGs (two classes) and their labels."""
    from handlers.ml.synthetic import ensure_synthetic
    root = ensure_synthetic(tmp_path_factory.mktemp("dali"), CLASSES, {"train": 10}, 64, source_size=512,
                            image_format="jpeg")
    paths, labels = [], []
    for k, name in enumerate(CLASSES):
        found = sorted((root / "train" / name).glob("*.jpg"))
        paths += found
        labels += [k] * len(found)
    return paths[:19], labels[:19]


def cpu_spec(**over) -> PipelineSpec:
    base = dict(image_size=64, batch_size=4, train=False, decoder="cpu", device_id=None, num_threads=2,
                dtype="float32")
    return PipelineSpec(**{**base, **over})


@needs_dali
def test_evaluation_output_matches_torchvision_within_a_few_grey_levels(jpegs):
    from handlers.preprocessing.dali_checks import check_eval_against_torchvision
    paths, labels = jpegs
    result = check_eval_against_torchvision(paths[:8], labels[:8], cpu_spec(image_size=224))
    dali = result["dali_vs_torchvision"]
    assert result["labels_identical"]
    assert dali["images"] == 8
    assert dali["gray_levels_max"] <= 8 and dali["mean_abs"] * 255 * 0.225 <= 1.0
    assert 0 < dali["max_abs"]          # two decoders and two resize filters never agree bit for bit


@needs_dali
def test_the_comparison_catches_a_pipeline_that_mirrors_in_evaluation(jpegs, monkeypatch):
    from handlers.preprocessing import dali_checks
    paths, labels = jpegs
    real = dali_checks.torchvision_reference
    monkeypatch.setattr(dali_checks, "torchvision_reference", lambda *a: real(*a)[:, :, ::-1])
    wrong = dali_checks.check_eval_against_torchvision(paths[:4], labels[:4], cpu_spec(image_size=224))
    assert wrong["dali_vs_torchvision"]["gray_levels_max"] > 8


@needs_dali
def test_shards_see_every_image_once_and_train_on_equal_whole_batches(jpegs):
    from handlers.preprocessing.dali_checks import run_shard_check
    paths, _ = jpegs
    report = run_shard_check(paths, cpu_spec(batch_size=3), num_shards=2, epochs=3)
    assert report["ok"], report["problems"]
    assert report["train_images_per_shard"] == full_batches(19, 2, 3) * 3 == 9


@needs_dali
def test_the_shard_report_names_missing_and_repeated_images():
    from handlers.preprocessing.dali_checks import shard_report
    report = shard_report([[np.array([0, 1]), np.array([1, 3])]], [[np.array([0, 1]), np.array([1])]], 4, 2, 1)
    assert not report["ok"]
    assert "1 images missing, 1 seen more than once" in report["problems"][0]
    assert "shard sizes [2, 1]" in report["problems"][1]


@needs_dali
def test_training_batches_are_whole_normalised_and_channels_last(jpegs):
    import torch
    from handlers.preprocessing.dali_loader import DaliBatches
    from handlers.preprocessing.dali_checks import _FileList
    paths, labels = jpegs
    spec = cpu_spec(train=True, batch_size=4, channels_last=True, dtype="float16", shard_id=1, num_shards=2)
    source = DaliBatches(_FileList(paths, labels, 64, 0.5), spec)
    assert len(source) == full_batches(19, 2, 4) == 2
    for epoch in range(2):
        batches = list(source)
        assert len(batches) == 2
        for x, y in batches:
            assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float16 and y.dtype == torch.int64
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert -2.2 < float(x.min()) and float(x.max()) < 2.7       # ImageNet-normalised range
            assert bool(torch.isfinite(x).all())
            # gray replicated: the channels differ only by mean/std
            r = x[:, 0].float() * 0.229 + 0.485
            g = x[:, 1].float() * 0.224 + 0.456
            assert torch.allclose(r, g, atol=2e-2)


@needs_dali
def test_stopping_early_in_an_epoch_does_not_shift_the_next(jpegs):
    from handlers.preprocessing.dali_loader import DaliBatches
    from handlers.preprocessing.dali_checks import _FileList
    paths, labels = jpegs
    source = DaliBatches(_FileList(paths, list(range(19)), 64, 0.0), cpu_spec(batch_size=4))
    first = [y.tolist() for _, y in source]
    for _ in source:            # the consumer leaves after one batch
        break
    again = [y.tolist() for _, y in source]
    assert sorted(sum(first, [])) == list(range(19)) and sorted(sum(again, [])) == list(range(19))


@needs_dali
def test_in_memory_arrays_shard_and_shuffle_like_the_file_reader():
    import torch
    from handlers.ml.data import ArrayDataset
    from handlers.preprocessing.dali_loader import DaliBatches
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (22, 40, 40), dtype=np.uint8)
    ds = ArrayDataset(images, list(range(22)), 32, train=True)
    seen = {0: [], 1: []}
    for shard in (0, 1):
        source = DaliBatches(ds, cpu_spec(image_size=32, train=True, batch_size=5, shard_id=shard, num_shards=2))
        for epoch in range(2):
            batches = list(source)
            assert len(batches) == 2 and all(x.shape == (5, 3, 32, 32) and len(y) == 5 for x, y in batches)
            seen[shard].append(torch.cat([y for _, y in batches]).tolist())
    for epoch in range(2):
        both = seen[0][epoch] + seen[1][epoch]
        assert len(set(both)) == len(both) == 20           # disjoint, whole batches
    assert seen[0][0] != seen[0][1]                         # reshuffled between epochs


@needs_dali
def test_training_with_loader_dali_on_the_cpu(tmp_path):
    from test_ml_training import Recorder, tiny_project
    from handlers.training.params import TrainParams
    from handlers.training.session import run_training
    params = TrainParams(epochs=2, batch_size=16, workers=0, loader="dali", bn_recalibration_images=32)
    run = run_training(params, tiny_project(train=24, val=8, test=8), tmp_path, tmp_path / "m.pt", Recorder())
    assert run.fit.loader == "dali" and run.summary()["loader"] == "dali"
    assert run.fit.optimizer_steps == 2 * 3                 # 48 images / 16, whole batches
    assert any("DALI decodes on the CPU" in f for f in run.findings)


# ------------------------------------------------------------------ on the GPU (nvJPEG, mixed decoder)

def gpu_spec(**over) -> PipelineSpec:
    base = dict(image_size=64, batch_size=4, train=False, decoder="mixed", device_id=0, num_threads=4,
                dtype="float32")
    return PipelineSpec(**{**base, **over})


@pytest.mark.gpu
@needs_dali
def test_gpu_decoding_matches_torchvision_within_the_tolerance(jpegs):
    from handlers.preprocessing.dali_checks import check_eval_against_torchvision
    paths, labels = jpegs
    result = check_eval_against_torchvision(paths[:8], labels[:8], gpu_spec(image_size=224))
    dali = result["dali_vs_torchvision"]
    assert result["labels_identical"] and result["decoder"] == "mixed"
    assert dali["gray_levels_max"] <= 8 and dali["mean_abs"] * 255 * 0.225 <= 1.0


@pytest.mark.gpu
@needs_dali
def test_gpu_shards_and_training_batches(jpegs):
    import torch
    from handlers.preprocessing.dali_checks import _FileList, run_shard_check
    from handlers.preprocessing.dali_loader import DaliBatches
    paths, labels = jpegs
    assert run_shard_check(paths, gpu_spec(batch_size=3), num_shards=2, epochs=2)["ok"]
    source = DaliBatches(_FileList(paths, labels, 64, 0.5),
                         gpu_spec(train=True, channels_last=True, dtype="float16", shard_id=0, num_shards=2))
    x, y = next(iter(source))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float16 and x.shape == (4, 3, 64, 64)
    assert x.is_contiguous(memory_format=torch.channels_last)
