import numpy as np
import pytest
import torch

from safcore import data


def test_breastmnist_through_medmnist(data_root):
    ds = data.load_dataset("breastmnist", root=data_root)
    assert [len(ds.split(s)) for s in data.SPLITS] == [546, 78, 156]
    assert ds.n_channels == 1 and ds.image_size == 28
    assert ds.info["label"] == {"0": "malignant", "1": "normal, benign"}
    assert ds.labels("train").shape == (546, 1)


def test_flag_is_case_insensitive_and_env_root(data_root, monkeypatch):
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(data_root))
    assert data.load_dataset("BreastMNIST").name == "breastmnist"


def test_users_own_npz_by_path(user_npz):
    ds = data.load_dataset(user_npz)
    assert ds.info is None and ds.name == "pneumonia_subset"
    assert [len(ds.split(s)) for s in data.SPLITS] == [3882, 524, 624]


def test_unknown_flag_lists_2d_flags():
    with pytest.raises(ValueError, match=r"'nosuchmnist'.*breastmnist.*pathmnist"):
        data.load_dataset("nosuchmnist")


def test_3d_flag_is_refused():
    with pytest.raises(ValueError, match="organmnist3d"):
        data.load_dataset("organmnist3d")


def test_size_medmnist_does_not_publish(data_root):
    with pytest.raises(ValueError, match=r"no size 32 px.*28, 64, 128, 224"):
        data.load_dataset("breastmnist", root=data_root, size=32)


def test_missing_file_offline_names_file_root_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("pathmnist", root=tmp_path)
    message = str(info.value)
    assert "pathmnist.npz" in message and str(tmp_path) in message and "download=True" in message
    assert "SAFCORE_DATA_ROOT" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_missing_npz_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_dataset(tmp_path / "mine.npz")


def test_npz_with_missing_keys(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"lacks the MedMNIST keys.*test_images"):
        data.load_dataset(path)


def _layout(**override):
    arrays = {}
    for split, n in zip(data.SPLITS, (4, 2, 2)):
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.uint8)
    arrays.update(override)
    return arrays


@pytest.mark.parametrize(
    "override, match",
    [
        ({"train_images": np.zeros((4, 28, 27), np.uint8)}, r"train_images has shape \(4, 28, 27\)"),
        ({"val_images": np.zeros((2, 28, 28, 2), np.uint8)}, r"val_images has shape"),
        ({"test_labels": np.zeros((3, 1), np.uint8)}, r"test_labels has shape \(3, 1\)"),
        ({"train_images": np.zeros((4, 28, 28), np.float32)}, r"dtype float32"),
        ({"val_images": np.zeros((2, 64, 64), np.uint8)}, r"other splits"),
    ],
)
def test_npz_with_wrong_shapes(tmp_path, override, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **_layout(**override))
    with pytest.raises(ValueError, match=match):
        data.load_dataset(path)


def test_seeded_subset_is_reproducible_and_sized():
    images = np.arange(100 * 4, dtype=np.uint8).reshape(100, 2, 2)
    a, ia = data.seeded_subset(images, 10, seed=3)
    b, ib = data.seeded_subset(images, 10, seed=3)
    c, ic = data.seeded_subset(images, 10, seed=4)
    assert len(a) == 10 and np.array_equal(ia, ib) and not np.array_equal(ia, ic)
    assert len(set(ia.tolist())) == 10 and np.array_equal(a, images[ia])
    assert len(data.seeded_subset(images, 100, seed=0)[0]) == 100


@pytest.mark.parametrize("n", [0, -1, 101, 2.5])
def test_subset_size_out_of_range(n):
    with pytest.raises(ValueError, match=r"N_D = .* between 1 and 100"):
        data.seeded_subset(np.zeros((100, 2, 2), np.uint8), n, seed=0)


def test_unit_tensor_and_ranges():
    images = np.array([[[0, 255], [51, 102]]], np.uint8)
    grey = data.to_unit_tensor(images)
    assert grey.shape == (1, 1, 2, 2) and grey.dtype == torch.float32
    assert torch.allclose(grey[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    rgb = data.to_unit_tensor(images, channels=3)
    assert rgb.shape == (1, 3, 2, 2) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert torch.equal(data.to_model_range(grey), grey * 2 - 1)
    assert torch.allclose(data.from_model_range(data.to_model_range(grey)), grey)
    with pytest.raises(ValueError, match="channels=2"):
        data.to_unit_tensor(images, channels=2)
