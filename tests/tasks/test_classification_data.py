import numpy as np
import pytest
import torch

from conftest import FASHION_MNIST
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
