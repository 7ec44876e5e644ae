import re

import numpy as np
import pytest
import torch

from safcore.data import datasets as data


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


def test_given_root_without_the_file_names_flag_root_and_both_remedies(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("pathmnist", root=tmp_path, offline=False)  # a given root is never downloaded into
    message = str(info.value)
    assert "\n" not in message and "'pathmnist'" in message and "pathmnist.npz" in message
    assert f"the data root {tmp_path} (given by root=)" in message and "never downloaded into" in message
    assert "SAFCORE_DATA_ROOT" in message and "--data-root" in message and "without --offline" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_env_root_without_the_file_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"given by \$SAFCORE_DATA_ROOT; that folder does not exist"):
        data.load_dataset("breastmnist", offline=False)
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No data root given and an empty home: medmnist's cache is ``tmp_path/.medmnist``."""
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.medmnist_cache_root() == tmp_path / ".medmnist"
    return tmp_path


@pytest.mark.parametrize("how", ["argument", "env"])
def test_offline_without_root_names_the_cache_and_both_remedies(home, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(data.OFFLINE_ENV, "1")  # conftest sets it too; this says it on purpose
        kwargs = {}
    else:
        monkeypatch.setenv(data.OFFLINE_ENV, "0")
        kwargs = {"offline": True}
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("chestmnist", **kwargs)
    message = str(info.value)
    assert "\n" not in message and "'chestmnist'" in message and "chestmnist.npz" in message
    assert f"medmnist's cache {home / '.medmnist'} (that folder does not exist)" in message
    assert "SAFCORE_OFFLINE=1" in message and "--offline" in message and "forbids the download" in message
    assert "SAFCORE_DATA_ROOT" in message and "medmnist downloads it" in message
    assert list(home.iterdir()) == []


def test_cache_is_read_without_a_root_when_offline(home, data_root):
    cache = home / ".medmnist"
    cache.mkdir()
    (cache / "breastmnist.npz").write_bytes((data_root / "breastmnist.npz").read_bytes())
    ds = data.load_dataset("breastmnist", offline=True)
    assert ds.source == cache / "breastmnist.npz" and len(ds.split("train")) == 546


@pytest.mark.parametrize("value, offline", [("1", True), ("yes", True), ("0", False), ("", False), ("off", False)])
def test_offline_env_values(monkeypatch, value, offline):
    monkeypatch.setenv(data.OFFLINE_ENV, value)
    assert data.offline_from_env() is offline


def test_offline_env_nonsense_is_refused(monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "maybe")
    with pytest.raises(ValueError, match=r"SAFCORE_OFFLINE='maybe' is not understood.*1, true"):
        data.load_dataset("breastmnist")


def test_missing_npz_path(tmp_path):
    path = tmp_path / "mine.npz"
    with pytest.raises(FileNotFoundError, match=rf"dataset file {path} does not exist"):
        data.load_dataset(path)


def test_folder_named_npz(tmp_path):
    (tmp_path / "mine.npz").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mine.npz is a folder, not an .npz file"):
        data.load_dataset(tmp_path / "mine.npz")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"patient,label\n1,0\n", r"does not start like a zip archive \(first bytes b'patien'\)"),
        (b"", r"it is empty"),
        (b"PK\x03\x04 cut short", r"BadZipFile"),
    ],
)
def test_file_that_is_not_an_npz(tmp_path, content, match):
    path = tmp_path / "mine.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        data.load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable .npz archive")
    assert re.search(match, message) and "train_images" in message  # the expected layout is named
    assert "pickle" not in message  # numpy's advice to allow pickles does not leak through


def test_single_npy_named_npz(tmp_path):
    path = tmp_path / "mine.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"not a readable .npz archive: it holds a single .npy array"):
        data.load_dataset(path)


def test_npz_with_object_arrays(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, **_layout(train_labels=np.array([{"a": 1}] * 4, dtype=object)))
    with pytest.raises(ValueError) as info:
        data.load_dataset(path)
    assert "train_labels holds Python objects" in str(info.value) and "pickle" not in str(info.value)


def test_npz_with_missing_keys(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError) as info:
        data.load_dataset(path)
    message = str(info.value)
    assert re.search(r"lacks the MedMNIST keys \['test_images', 'test_labels', 'train_labels', 'val_images', "
                     r"'val_labels'\]; it has \['train_images'\]", message)
    assert ("Expected layout: train_images, val_images, test_images: uint8 arrays (N, H, W) (grey) or (N, H, W, 3) "
            "(RGB) with H == W = 28, 64 or 128" in message)


def test_flags_with_train_size():
    fitting = data.flags_with_train_size(5000)
    assert fitting[0] == ("dermamnist", 7007) and ("chestmnist", 78468) in fitting
    assert [size for _, size in fitting] == sorted(size for _, size in fitting) and min(s for _, s in fitting) >= 5000
    assert "breastmnist" not in dict(fitting) and "pneumoniamnist" not in dict(fitting)
    assert not any(flag.endswith("3d") for flag, _ in data.flags_with_train_size(1))


def test_check_n_dataset_fits(user_npz, data_root):
    assert data.check_n_dataset("breastmnist", 546) == 546  # from INFO: nothing is read
    assert data.check_n_dataset(user_npz, 3882) == 3882
    assert data.check_n_dataset(data.load_dataset("breastmnist", root=data_root), 1) == 546


def test_check_n_dataset_too_large_names_n_size_and_flags(user_npz):
    with pytest.raises(ValueError) as info:
        data.check_n_dataset("breastmnist", 5000)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("N_D = 5000 exceeds the 546 training images of breastmnist; MedMNIST flags whose train")
    assert "dermamnist (7007)" in message and "chestmnist (78468)" in message and "pneumoniamnist" not in message
    with pytest.raises(ValueError, match=rf"N_D_LARGE = 4000 exceeds the 3882 training images of {user_npz}; .*pneumoniamnist \(4708\)"):
        data.check_n_dataset(user_npz, 4000, name="N_D_LARGE")
    with pytest.raises(ValueError, match=r"no MedMNIST 2D flag fits \(the largest train split is tissuemnist's, 165466"):
        data.check_n_dataset("breastmnist", 10**6)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_check_n_dataset_refuses_non_sizes(n):
    with pytest.raises(ValueError, match=r"N_D = .* is not a training-set size"):
        data.check_n_dataset("breastmnist", n)


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
