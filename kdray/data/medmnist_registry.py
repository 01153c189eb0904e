"""The MedMNIST v2 registry: where each 2D and 3D set's file lives, its MD5 and its class names.

Vendored from the `medmnist` package, version 3.0.2, `medmnist/info.py` (`INFO`, Apache-2.0,
https://github.com/MedMNIST/MedMNIST), rather than depended on: that package pulls in
scikit-image, fire and others we do not use, and importing even `medmnist.info` runs its
`__init__` (torch datasets, evaluator) and creates `~/.medmnist`. Every URL there is
`https://zenodo.org/records/10519652/files/<flag>[_<size>].npz?download=1` (checked for all
sets), so only the MD5s are kept. `tests/test_medmnist_download.py` compares this table with the
package's own when the package is installed.

`KDRAY_MEDMNIST_MIRROR` (a URL prefix) replaces the Zenodo record, for a cluster that reads from
a local mirror; tests monkeypatch `registry()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"
MIRROR_ENV = "KDRAY_MEDMNIST_MIRROR"
SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class MedMNISTSet:
    """One set as the registry describes it; `md5` maps each published size to its MD5."""

    task: str
    n_channels: int
    labels: tuple[str, ...]
    md5: dict[int, str]
    n_samples: dict[str, int]
    license: str
    base_url: str = field(default=ZENODO_RECORD)


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: the set, its size, where it lives and what its MD5 must be."""

    name: str
    size: int
    url: str
    md5: str
    info: MedMNISTSet

    @property
    def filename(self) -> str:
        """The name the `medmnist` package gives it, so both share one folder."""
        return f"{self.name}.npz" if self.size == 28 else f"{self.name}_{self.size}.npz"


def registry() -> dict[str, MedMNISTSet]:
    """The 2D sets by name (a function, so tests can serve their own)."""
    return SETS


def lookup(name: str, size: int) -> RemoteFile:
    """The file for `name` at `size`; raises ValueError with one line saying what to pick."""
    sets = registry()
    if name in SETS_3D:
        raise ValueError(f"{name} is a 3D MedMNIST set; give it as data kind medmnist3d, or "
                         f"one of the 2D sets: {_names(sets)}")  # fmt: skip
    if name not in sets:
        raise ValueError(f"{name!r} is not a MedMNIST v2 2D set; pick one of {_names(sets)}")
    return _remote(name, size, sets[name])


def registry_3d() -> dict[str, MedMNISTSet]:
    """The 3D sets by name (a function, so tests can serve their own)."""
    return SETS_3D


def lookup_3d(name: str, size: int) -> RemoteFile:
    """The 3D set `name`'s file at `size` (28 or 64); ValueError with one line if none."""
    sets = registry_3d()
    if name not in sets:
        raise ValueError(f"{name!r} is not a MedMNIST v2 3D set; pick one of {_names(sets)}")
    return _remote(name, size, sets[name])


def _remote(name: str, size: int, info: MedMNISTSet) -> RemoteFile:
    if size not in info.md5:
        raise ValueError(f"{name} is published at sizes {sorted(info.md5)}, not {size}")
    base = os.environ.get(MIRROR_ENV) or info.base_url
    stem = name if size == 28 else f"{name}_{size}"
    return RemoteFile(name, size, f"{base.rstrip('/')}/{stem}.npz?download=1", info.md5[size], info)


def _names(sets: dict[str, MedMNISTSet]) -> str:
    return ", ".join(sets)


SETS: dict[str, MedMNISTSet] = {
    "pathmnist": MedMNISTSet(
        task="multi-class",
        n_channels=3,
        labels=(
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        md5={
            28: "a8b06965200029087d5bd730944a56c1",
            64: "55aa9c1e0525abe5a6b9d8343a507616",
            128: "ac42d08fb904d92c244187169d1fd1d9",
            224: "2c51a510bcdc9cf8ddb2af93af1eadec",
        },
        n_samples={"train": 89996, "val": 10004, "test": 7180},
        license="CC BY 4.0",
    ),
    "chestmnist": MedMNISTSet(
        task="multi-label, binary-class",
        n_channels=1,
        labels=(
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        md5={
            28: "02c8a6516a18b556561a56cbdd36c4a8",
            64: "9de6cd0b934ebb5b7426cfba5efbae16",
            128: "db107e5590b27930b62dbaf558aebee3",
            224: "45bd33e6f06c3e8cdb481c74a89152aa",
        },
        n_samples={"train": 78468, "val": 11219, "test": 22433},
        license="CC BY 4.0",
    ),
    "dermamnist": MedMNISTSet(
        task="multi-class",
        n_channels=3,
        labels=(
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        md5={
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
        n_samples={"train": 7007, "val": 1003, "test": 2005},
        license="CC BY-NC 4.0",
    ),
    "octmnist": MedMNISTSet(
        task="multi-class",
        n_channels=1,
        labels=("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        md5={
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
        n_samples={"train": 97477, "val": 10832, "test": 1000},
        license="CC BY 4.0",
    ),
    "pneumoniamnist": MedMNISTSet(
        task="binary-class",
        n_channels=1,
        labels=("normal", "pneumonia"),
        md5={
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
        n_samples={"train": 4708, "val": 524, "test": 624},
        license="CC BY 4.0",
    ),
    "retinamnist": MedMNISTSet(
        task="ordinal-regression",
        n_channels=3,
        labels=("0", "1", "2", "3", "4"),
        md5={
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
        n_samples={"train": 1080, "val": 120, "test": 400},
        license="CC BY 4.0",
    ),
    "breastmnist": MedMNISTSet(
        task="binary-class",
        n_channels=1,
        labels=("malignant", "normal, benign"),
        md5={
            28: "750601b1f35ba3300ea97c75c52ff8f6",
            64: "742edef2a1fd1524b2efff4bd7ba9364",
            128: "363e4b3f8d712e9b5de15470a2aaadf1",
            224: "b56378a6eefa9fed602bb16d192d4c8b",
        },
        n_samples={"train": 546, "val": 78, "test": 156},
        license="CC BY 4.0",
    ),
    "bloodmnist": MedMNISTSet(
        task="multi-class",
        n_channels=3,
        labels=(
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        md5={
            28: "7053d0359d879ad8a5505303e11de1dc",
            64: "2b94928a2ae4916078ca51e05b6b800b",
            128: "adace1e0ed228fccda1f39692059dd4c",
            224: "b718ff6835fcbdb22ba9eacccd7b2601",
        },
        n_samples={"train": 11959, "val": 1712, "test": 3421},
        license="CC BY 4.0",
    ),
    "tissuemnist": MedMNISTSet(
        task="multi-class",
        n_channels=1,
        labels=(
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        md5={
            28: "ebe78ee8b05294063de985d821c1c34b",
            64: "123ece2eba09d0aa5d698fda57103344",
            128: "61b955355d7425a89687b06cca3ce0c2",
            224: "b077128c4a949f0a4eb01517f9037b9c",
        },
        n_samples={"train": 165466, "val": 23640, "test": 47280},
        license="CC BY 4.0",
    ),
    "organamnist": MedMNISTSet(
        task="multi-class",
        n_channels=1,
        labels=(
            "bladder",
            "femur-left",
            "femur-right",
            "heart",
            "kidney-left",
            "kidney-right",
            "liver",
            "lung-left",
            "lung-right",
            "pancreas",
            "spleen",
        ),
        md5={
            28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
            64: "2dcccc29b88e6da5a01161ef20cda288",
            128: "eeae80d0a227a8d099027e1b3cfd3b60",
            224: "50747347e05c87dd3aaf92c49f9f3170",
        },
        n_samples={"train": 34561, "val": 6491, "test": 17778},
        license="CC BY 4.0",
    ),
    "organcmnist": MedMNISTSet(
        task="multi-class",
        n_channels=1,
        labels=(
            "bladder",
            "femur-left",
            "femur-right",
            "heart",
            "kidney-left",
            "kidney-right",
            "liver",
            "lung-left",
            "lung-right",
            "pancreas",
            "spleen",
        ),
        md5={
            28: "b9ceb9546e10131b32923c5bbeaea2b1",
            64: "3ce34a8724ea6f548e6db4744d03b6a9",
            128: "773c1f009daa3fe5d9a2a201b2a7ed94",
            224: "050f5e875dc056f6768abf94ec9995d1",
        },
        n_samples={"train": 12975, "val": 2392, "test": 8216},
        license="CC BY 4.0",
    ),
    "organsmnist": MedMNISTSet(
        task="multi-class",
        n_channels=1,
        labels=(
            "bladder",
            "femur-left",
            "femur-right",
            "heart",
            "kidney-left",
            "kidney-right",
            "liver",
            "lung-left",
            "lung-right",
            "pancreas",
            "spleen",
        ),
        md5={
            28: "9ab87b696fb54e2a387ebe992d6ed5f1",
            64: "53a6d115339d874c25e309a994ff46d3",
            128: "ded0c5fa01a95dc4978b956f613e9b8e",
            224: "b354719e553fbbb2513d5533f52a4cb1",
        },
        n_samples={"train": 13932, "val": 2452, "test": 8827},
        license="CC BY 4.0",
    ),
}


def _three_d(
    task: str, labels: tuple[str, ...], md5: tuple[str, str], counts: tuple
) -> MedMNISTSet:
    """A 3D set: one channel, sizes 28 and 64 (`{flag}.npz`, `{flag}_64.npz`)."""
    splits = dict(zip(("train", "val", "test"), counts, strict=True))
    return MedMNISTSet(task, 1, labels, {28: md5[0], 64: md5[1]}, splits, "CC BY 4.0")


# medmnist 3.0.2's INFO for the 3D sets (labels, MD5 and MD5_64, n_samples)
SETS_3D: dict[str, MedMNISTSet] = {
    "organmnist3d": _three_d(
        "multi-class",
        (
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ),
        ("a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10"),
        (971, 161, 610),
    ),  # fmt: skip
    "nodulemnist3d": _three_d(
        "binary-class",
        ("benign", "malignant"),
        ("8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8"),
        (1158, 165, 310),
    ),
    "adrenalmnist3d": _three_d(
        "binary-class",
        ("normal", "hyperplasia"),
        ("bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f"),
        (1188, 98, 298),
    ),
    "fracturemnist3d": _three_d(
        "multi-class",
        ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
        ("6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42"),
        (1027, 103, 240),
    ),
    "vesselmnist3d": _three_d(
        "binary-class",
        ("vessel", "aneurysm"),
        ("b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f"),
        (1335, 191, 382),
    ),
    "synapsemnist3d": _three_d(
        "binary-class",
        ("inhibitory synapse", "excitatory synapse"),
        ("1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e"),
        (1230, 177, 352),
    ),
}
