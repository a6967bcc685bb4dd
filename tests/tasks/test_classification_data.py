import numpy as np
import pytest
import torch

from conftest import FASHION_MNIST
from model_weights import randomise_weights
from involution.tasks.classification.data import load_splits
from involution.tasks.classification.transforms import AugmentedDataset, build_image_transform, build_transforms


def test_digits_split_is_fixed_and_stratified():
    a = load_splits("digits", None, 8, 0.1)
    b = load_splits("digits", None, 8, 0.1)
    assert len(a.test) == 360 and len(a.train) + len(a.val) == 1437
    assert torch.equal(a.test.images, b.test.images)
    counts = np.bincount(a.train_targets, minlength=10)
    assert counts.min() > 100 and a.spec.classes == [str(i) for i in range(10)] and a.spec.in_chans == 1


def test_augmentation_depends_only_on_seed_epoch_and_index():
    splits = load_splits("digits", None, 8, 0.0)
    train_tf, eval_tf = build_transforms(splits.spec, augment=True)
    data = AugmentedDataset(splits.train, train_tf, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    x1, y1 = data[(2, 17)]
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG stream must not move"
    x2, _ = data[(2, 17)]
    assert torch.equal(x1, x2)
    different = [not torch.equal(x1, data[(e, 17)][0]) for e in range(3, 13)]
    assert any(different), "other epochs draw other crops"
    assert x1.shape == (1, 8, 8) and x1.dtype == torch.float32
    plain = AugmentedDataset(splits.test, eval_tf)
    assert torch.equal(plain[5][0], plain[5][0])


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_splits("fashion-mnist", None, 28, 0.1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_splits("cifar10", tmp_path / "nowhere", 32, 0.1)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_splits("cifar10", tmp_path, 32, 0.1)


@pytest.mark.parametrize("data, where", [("cifar10", "cifar-10-batches-py/{data_batch_1..5"),
                                         ("fashion-mnist", "FashionMNIST/raw/")])
def test_a_folder_without_the_files_says_what_to_put_there(tmp_path, capsys, data, where):
    """torchvision's message suggests download=True, which the command line cannot pass: ours says what goes where."""
    from involution.cli import main

    assert main(["train", "--data", data, "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/{where}" in err and "download=True" not in err and "nothing is downloaded" in err, err
    assert len(err.strip().splitlines()) == 1, err


def _png16(path, values):
    from PIL import Image

    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    return path


def test_a_16_bit_png_is_read_at_full_precision(tmp_path):
    """Pillow's convert clips a 16-bit grey image at 255: every pixel above 255 of 65535 became white."""
    from involution.tasks._images import read_image
    from involution.tasks.classification.data import DataSpec

    values = np.arange(64, dtype=np.int64).reshape(8, 8) * 1000 + 7  # 7 ... 63007: low bits matter too
    path = _png16(tmp_path / "deep.png", values)
    expect = torch.from_numpy(values / 65535).float()
    rgb = read_image(path)
    assert rgb.shape == (3, 8, 8) and torch.allclose(rgb, expect.expand(3, 8, 8), atol=1e-7, rtol=0)
    spec = DataSpec("digits", ["0"], 1, 8, [0.0], [1.0])  # no normalisation: the values as read
    grey = read_image(path, build_image_transform(spec))
    assert grey.shape == (1, 8, 8) and torch.allclose(grey[0], expect, atol=1e-6, rtol=0)
    spec16 = DataSpec("digits", ["0"], 1, 4, [0.0], [1.0])  # resized like an 8-bit image
    resized = read_image(path, build_image_transform(spec16))
    assert resized.shape == (1, 4, 4) and 0.01 < resized.min() and resized.max() < 0.97


def test_predict_reads_a_16_bit_png_as_the_model_sees_its_values(tmp_path):
    from involution.models import create_model, save_checkpoint
    from involution.tasks.classification import predict

    # random BN statistics and scales, and a classifier strong enough to separate the classes but not so strong
    # that the softmax saturates: the probabilities depend on the input well beyond the tolerance (checked below)
    model = randomise_weights(create_model("rednet26_small", num_classes=10, in_chans=1, width=0.125)).eval()
    with torch.no_grad():
        model.fc.weight.mul_(3)
    spec = {"dataset": "digits", "classes": [str(i) for i in range(10)], "in_chans": 1, "image_size": 8,
            "mean": [0.3], "std": [0.37], "eval_resize": None}
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"data_spec": spec})
    values = np.random.default_rng(0).integers(0, 65536, (8, 8))
    [(_, top)] = predict(path, [_png16(tmp_path / "deep.png", values)], topk=10)
    with torch.no_grad():
        x = (torch.from_numpy(values / 65535).float() - 0.3) / 0.37
        probs = model(x.view(1, 1, 8, 8)).softmax(dim=1)[0]
    for name, p in top:
        assert probs[int(name)].item() == pytest.approx(p, abs=1e-6), name
    with torch.no_grad():  # what clipping at 255 (of 65535) fed the model: far from predict's probabilities
        clipped = (torch.from_numpy(np.minimum(values, 255) / 255).float() - 0.3) / 0.37
        assert (model(clipped.view(1, 1, 8, 8)).softmax(dim=1)[0] - probs).abs().max() > 1e-3


def test_a_float_image_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    from involution.tasks._images import read_image

    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((4, 4), 3.5, dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=r"float.tiff: a 32-bit floating-point image has no fixed value range"):
        read_image(path)


def _write_image_folder(root, classes=("cat", "dog"), per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folder_layout(tmp_path):
    _write_image_folder(tmp_path)
    splits = load_splits("imagefolder", tmp_path, 16, 0.0)
    assert splits.spec.classes == ["cat", "dog"] and len(splits.train) == 12 and len(splits.test) == 12
    train_tf, eval_tf = build_transforms(splits.spec, augment=True)
    x, y = AugmentedDataset(splits.train, train_tf)[(0, 3)]
    assert x.shape == (3, 16, 16) and y == 0
    assert AugmentedDataset(splits.test, eval_tf)[0][0].shape == (3, 16, 16)


def test_image_folder_without_train_or_val(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        load_splits("imagefolder", tmp_path, 16, 0.0)
    _write_image_folder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="--val-fraction"):
        load_splits("imagefolder", tmp_path, 16, 0.0)
    splits = load_splits("imagefolder", tmp_path, 16, 0.5)
    assert len(splits.train) == 6 and len(splits.val) == 6


def test_image_transform_for_predict_matches_eval_preprocessing():
    from PIL import Image

    splits = load_splits("digits", None, 8, 0.0)
    _, eval_tf = build_transforms(splits.spec, augment=False)
    image = splits.test.images[0]  # (1, 8, 8) in [0, 1]
    pil = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
    got = build_image_transform(splits.spec)(pil)
    assert torch.allclose(got, eval_tf(image), atol=1e-2 / splits.spec.std[0])


@pytest.mark.skipif(not (FASHION_MNIST / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not at ../shared/data")
def test_fashion_mnist_from_shared_data():
    splits = load_splits("fashion-mnist", FASHION_MNIST, 28, 0.1)
    assert len(splits.test) == 10_000 and len(splits.train) + len(splits.val) == 60_000
    assert splits.spec.classes[0] == "T-shirt/top" and 0.2 < splits.spec.mean[0] < 0.4
    # the raw folder itself is accepted too
    assert len(load_splits("fashion-mnist", FASHION_MNIST / "FashionMNIST" / "raw", 28, 0.0).test) == 10_000
