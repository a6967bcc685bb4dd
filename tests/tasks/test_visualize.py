import numpy as np
import pytest
import torch
from torch import nn

from involution.cli import main
from involution.layers import Involution2d
from involution.tasks.classification.visualize import (
    default_layer,
    involution_kernels,
    list_involution_layers,
    pixel_to_grid,
    plot_kernels,
    reduce_kernels,
)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Involution2d(8, kernel_size=3, groups=2, reduction_ratio=2),
        nn.ReLU(),
        Involution2d(8, kernel_size=5, stride=2, groups=4, reduction_ratio=2),
    )


def test_kernels_have_the_layout_and_equal_generate_kernel_on_the_layer_input():
    net = _tiny_net().train()
    image = torch.randn(3, 11, 9)
    inputs = {}
    hooks = [net[i].register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone())) for i in (1, 3)]
    kernels = involution_kernels(net, image)
    for h in hooks:
        h.remove()
    assert list(kernels) == ["1", "3"]
    assert kernels["1"].shape == (2, 3, 3, 11, 9)
    assert kernels["3"].shape == (4, 5, 5, 6, 5)  # stride 2, ceil
    assert net.training, "the model's mode is restored"
    net.eval()
    with torch.no_grad():
        for i in (1, 3):
            torch.testing.assert_close(kernels[str(i)], net[i].generate_kernel(inputs[i])[0])
    only = involution_kernels(net, image.unsqueeze(0), layer="3")
    assert list(only) == ["3"] and torch.equal(only["3"], kernels["3"])


def test_layer_listing_reduction_and_errors():
    net = _tiny_net()
    infos = list_involution_layers(net, torch.randn(3, 11, 9))
    assert [(i.name, i.groups, i.kernel_size, i.stride, i.output_size) for i in infos] == [
        ("1", 2, (3, 3), (1, 1), (11, 9)),
        ("3", 4, (5, 5), (2, 2), (6, 5)),
    ]
    assert default_layer(net) == "1"
    with pytest.raises(ValueError, match="valid names: 1, 3"):
        involution_kernels(net, torch.randn(3, 8, 8), layer="4")
    with pytest.raises(ValueError, match="one image"):
        involution_kernels(net, torch.randn(2, 3, 8, 8))
    k = torch.randn(2, 3, 3, 4, 4)
    torch.testing.assert_close(reduce_kernels(k, "sum")[1, 2, 3], k[1, :, :, 2, 3].sum())
    torch.testing.assert_close(reduce_kernels(k, "norm")[0, 1, 0], k[0, :, :, 1, 0].norm())
    assert pixel_to_grid((27, 0), (28, 28), (14, 14)) == (13, 0)


def test_plot_kernels_writes_a_png(tmp_path):
    path = plot_kernels(np.random.rand(12, 12), torch.randn(3, 3, 3, 6, 6), tmp_path / "k.png", pixel=(2, 11))
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"\[0, 11\]"):
        plot_kernels(np.random.rand(12, 12), torch.randn(3, 3, 3, 6, 6), tmp_path / "k.png", pixel=(12, 0))


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from PIL import Image
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("images") / "digit.png"
    Image.fromarray((load_digits().images[7] * 255 / 16).astype(np.uint8)).save(path)
    return path


def test_cli_draws_the_default_layer(trained_run, digit_png, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "kernels.png"
    assert main(["visualize", "--checkpoint", str(trained_run), str(digit_png), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("layer1.") and str(out) in printed
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 200
    # another layer, a chosen pixel, norm; the default output goes to the run directory
    assert main(["visualize", "--checkpoint", str(trained_run), str(digit_png), "--layer", "stem.1",
                 "--pixel", "0", "7", "--reduce", "norm"]) == 0
    assert (trained_run / "kernels-digit-stem_1.png").is_file()


def test_cli_lists_layers(trained_run, capsys):
    assert main(["visualize", "--checkpoint", str(trained_run), "--layer", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stem.1 ") and any(line.startswith("layer4.") for line in lines)
    assert all(" G=" in line and " K=" in line and "stride" in line and " out " in line for line in lines)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "layer9.0.conv2"], "valid names: stem.1, layer1.0.conv2"),
        (["--pixel", "8", "0"], "Y must be in [0, 7]"),
        (["--pixel", "0", "-1"], "X in [0, 7]"),
    ],
)
def test_cli_bad_layer_or_pixel_is_one_clear_line(trained_run, digit_png, extra, message, capsys):
    assert main(["visualize", "--checkpoint", str(trained_run), str(digit_png), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_missing_image_is_a_clear_error(trained_run, tmp_path, capsys):
    assert main(["visualize", "--checkpoint", str(trained_run), str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert "image not found" in err and "nope.png" in err
