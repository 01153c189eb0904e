"""Multi-label CSVs: one column per label, the CheXpert / ChestX-ray14 way (`kind: folder` with
`csv:` and `label_columns:`).

    path,Atelectasis,Cardiomegaly,Effusion,split
    p1/s1/view1.jpg,1,0,,train
    p1/s2/view1.jpg,-1,1,0,valid

A cell is 1 (present), 0 or empty (absent: not mentioned, as CheXpert's labellers leave it),
or -1 (uncertain, CheXpert's convention), which `uncertain` resolves: `ignore` (the label is
unknown for that image: left out of the loss and of the metrics), `zeros` or `ones` (the U-Zeros
and U-Ones policies of Irvin et al., 2019). Decimal forms (`1.0`, `-1.0`) are read too.
"""

from __future__ import annotations

import numpy as np

from kdray.tasks import UNLABELLED

VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0, "-1": -1, "-1.0": -1}
UNCERTAIN = {"ignore": UNLABELLED, "zeros": 0, "ones": 1}


def header_columns(header: list[str], wanted: list[str]) -> tuple[dict[str, int], list[str]]:
    """Each wanted label's column index (names matched case-insensitively) and the names the
    header lacks."""
    lowered = [h.strip().lower() for h in header]
    found = {name: lowered.index(name.lower()) for name in wanted if name.lower() in lowered}
    return found, [name for name in wanted if name not in found]


def label_row(
    cells: list[str], columns: dict[str, int], uncertain: str, where: str, problems: list[str]
) -> tuple[int, ...] | None:
    """One row's labels in `columns` order, uncertain ones resolved; None (and a problem line
    naming the column) when a cell is not 1, 0, empty or -1."""
    row = []
    for name, index in columns.items():
        text = cells[index].strip()
        if text not in VALUES:
            problems.append(
                f"{where}: column {name!r} holds {text!r}; a label cell is 1, 0, empty or -1 "
                "(uncertain)"
            )
            return None
        value = VALUES[text]
        row.append(UNCERTAIN[uncertain] if value == -1 else value)
    return tuple(row)


def label_matrix(rows: list[tuple[int, ...]], width: int) -> np.ndarray:
    """The rows as an (N, L) int64 array (N may be 0)."""
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), width)
