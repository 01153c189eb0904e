"""One run's folder, `runs/<run id>/`, and the one owner of its files:

summary.json    the run's result (written once, by the worker, when the run ends)
failure.json    why a run that never wrote a summary failed (the driver, after the grid)
attempts.json   how often the run was started (the worker, at each start)
epochs.jsonl    one row per epoch so far (the worker, after each epoch)
checkpoint.pt   the last epoch's training state (the worker): what a restarted or resumed run
                continues from, whichever trial (pack of runs) trains it next
model.pt        the deployable network (`kdray.store.model_file`)

Runs made before runs were packed into trials kept their checkpoints in Ray Train's storage
(`train/<run id>/checkpoint_*/state.pt`); `legacy_checkpoint` still finds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdray.store.atomic import atomic_write, write_json
from kdray.store.json_files import ExperimentError, damaged, read_json

LEGACY_STATE_FILE = "state.pt"  # inside a Ray Train checkpoint folder


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def model_file(self) -> Path:
        return self.path / "model.pt"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    # --- the result -----------------------------------------------------------------------

    def summary(self) -> dict | None:
        """summary.json, or None while the run has not ended; damaged: `ExperimentError`."""
        path = self.path / "summary.json"
        if not path.is_file():
            return None
        again = (  # a finished run keeps no training state: its model.pt is its result
            "continues from its last checkpoint"
            if self.checkpoint_file.is_file()
            else "trains again from its start: it kept no checkpoint"
        )
        advice = f"delete it and run `kdray resume {self.path.parent.parent}` (the run {again})"
        summary = read_json(path, advice)
        if not isinstance(summary, dict) or "status" not in summary:
            raise ExperimentError(f"{path} is damaged (no status): {advice}")
        return summary

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / "summary.json", summary)

    def failure(self) -> str | None:
        """The error recorded for a run that failed without a summary, if any."""
        path = self.path / "failure.json"
        if not path.is_file():
            return None
        failed = read_json(path, f"delete it; `kdray resume {self.path.parent.parent}` retries it")
        error = failed.get("error") if isinstance(failed, dict) else None
        return error or "failed (no error recorded)"

    def record_failure(self, error: str) -> None:
        write_json(self.path / "failure.json", {"error": error})

    def clear_failure(self) -> None:
        (self.path / "failure.json").unlink(missing_ok=True)

    # --- progress -----------------------------------------------------------------------

    def attempts(self) -> int:
        path = self.path / "attempts.json"
        if not path.is_file():
            return 0
        saved = read_json(path, "delete it (it only counts how often the run was launched)")
        if not isinstance(saved, dict) or not isinstance(saved.get("attempts"), int):
            raise ExperimentError(f"{path} is damaged (no attempts count): delete it")
        return saved["attempts"]

    def start_attempt(self) -> int:
        """Count one more start of the run; returns the count."""
        attempts = self.attempts() + 1
        write_json(self.path / "attempts.json", {"attempts": attempts})
        return attempts

    def started(self) -> bool:
        return (self.path / "attempts.json").is_file()

    def epochs(self) -> list[dict]:
        """epochs.jsonl's rows; a damaged line raises `ExperimentError` naming it."""
        path = self.path / "epochs.jsonl"
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                where = f"line {number} of {path}"
                raise ExperimentError(
                    damaged(where, exc, "delete that line (the run's other epochs are kept)")
                ) from None
            rows.append(row)
        return rows

    def write_epochs(self, history: list[dict]) -> None:
        with atomic_write(self.path / "epochs.jsonl") as fh:
            fh.writelines(json.dumps(h) + "\n" for h in history)

    # --- training state -----------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        import torch  # here: the grid's ledger reads run folders without loading torch

        with atomic_write(self.checkpoint_file, "wb") as fh:
            torch.save(state, fh)

    def load_checkpoint(self, device, legacy_root: Path | None = None) -> dict | None:
        """The last epoch's training state: checkpoint.pt, else (a run started before runs
        were packed) the newest Ray Train checkpoint under `legacy_root/<run id>/`."""
        path = self.checkpoint_file
        if not path.is_file() and legacy_root is not None:
            path = legacy_checkpoint(Path(legacy_root) / self.run_id)
        if path is None or not path.is_file():
            return None
        import torch

        return torch.load(path, map_location=device, weights_only=True)

    def drop_checkpoint(self) -> None:
        """A finished run needs no training state (its model.pt is the result)."""
        self.checkpoint_file.unlink(missing_ok=True)


def legacy_checkpoint(train_dir: Path) -> Path | None:
    """The newest `checkpoint_<time>/state.pt` Ray Train wrote for a run, if any."""
    if not train_dir.is_dir():
        return None
    found = sorted(train_dir.glob(f"checkpoint_*/{LEGACY_STATE_FILE}"))
    return found[-1] if found else None
