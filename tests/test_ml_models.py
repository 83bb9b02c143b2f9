"""The model builder: head replacement, freezing, weights resolution and checkpoints."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from handlers.ml import models  # noqa: E402
from handlers.ml.models import ModelError, build_model, load_checkpoint  # noqa: E402
from handlers.ml.training import save_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path, monkeypatch):
    """No cached weights and no network: every ImageNet request must fail fast."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(url, dst, progress=False):
        raise OSError("network unreachable (test)")
    monkeypatch.setattr(models.torch.hub, "download_url_to_file", offline)


def test_head_replaced_and_blocks_frozen_up_to_layer3():
    built = build_model("resnet18", 3, weights="none", freeze="layer3")
    assert built.head == "fc" and built.model.fc.out_features == 3
    frozen = {n.split(".")[0] for n, p in built.model.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in built.model.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert trainable == {"layer4", "fc"}
    assert built.trainable_params == sum(p.numel() for p in built.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch,head", [("densenet121", "classifier"), ("efficientnet_b0", "classifier.1"),
                                       ("convnext_tiny", "classifier.2")])
def test_prototype_architectures_get_a_new_head(arch, head):
    built = build_model(arch, 2, weights="none", freeze=None)
    assert built.head == head
    assert built.model.get_submodule(head).out_features == 2
    out = built.model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2)


def test_unknown_freeze_block_lists_the_choices():
    with pytest.raises(ModelError) as err:
        build_model("resnet18", 2, weights="none", freeze="layer9")
    assert "layer9" in err.value.message and "layer3" in err.value.hint


def test_freezing_the_head_is_refused():
    with pytest.raises(ModelError, match="would freeze the new classifier"):
        build_model("resnet18", 2, weights="none", freeze="fc")


def test_imagenet_unavailable_is_an_error_naming_the_cache_file(tmp_path):
    with pytest.raises(ModelError) as err:
        build_model("resnet18", 2, weights="imagenet")
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in err.value.hint
    assert "weights: none" in err.value.hint


def test_auto_falls_back_to_random_init_trains_everything_and_says_so():
    built = build_model("resnet18", 2, weights="auto", freeze="layer3")
    assert built.weights.used == "none" and not built.weights.pretrained
    assert "random initialisation" in built.weights.note and "nothing frozen" in built.weights.note
    assert built.trainable_params == built.total_params


def test_explicit_none_keeps_the_users_freeze():
    built = build_model("resnet18", 2, weights="none", freeze="layer3")
    assert built.trainable_params < built.total_params


def test_cached_imagenet_file_is_used(tmp_path):
    reference = build_model("resnet18", 1000, weights="none").model   # stands in for the download
    path = models.imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    built = build_model("resnet18", 2, weights="imagenet")
    assert built.weights.used == "imagenet"
    assert torch.equal(built.model.conv1.weight, reference.conv1.weight)


def test_weights_path_must_exist(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model("resnet18", 2, weights="missing.pth", project_root=tmp_path)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    built = build_model("resnet18", 2, weights="none")
    path = tmp_path / "model.pt"
    save_checkpoint(built.model, path, {"arch": "resnet18", "classes": ["NORMAL", "PNEUMONIA"], "epoch": 3})
    model, meta = load_checkpoint(path)
    assert meta["epoch"] == 3
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), built.model.eval()(x))
    assert not list(Path(tmp_path).glob(".*tmp*"))       # written atomically
