"""`--ledger FILE`: finished runs of a seeded profile kept in one small JSON file, so that a protocol that takes
longer than one machine's life (the evidence profile: many hours on 2 cores) goes on where the last session
stopped, from a file that can be committed (no model folders needed)."""
import json
import os
from typing import Dict, List, Optional, Tuple

from nnunet_qg.atomic import atomic_write_json

LedgerKey = Tuple[str, str, str, Optional[int]]  # profile, arm, labelled fraction, seed


def ledger_key(profile: str, row: dict) -> LedgerKey:
    """A run's key: its profile, arm, labelled fraction and seed (`row` needs "arm" and "fraction")."""
    return profile, row["arm"], row["fraction"], row.get("seed")


def read_ledger(path: str) -> List[dict]:
    """The rows of the ledger (none if the file does not exist yet); a damaged file stops with its name."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            runs = json.load(f)["runs"]
    except (ValueError, KeyError) as error:
        raise SystemExit(f"ERROR: the benchmark ledger {path} cannot be read ({error}). Restore it from git "
                         f"(`git checkout -- {path}`) or pass another --ledger.")
    return runs


def ledger_rows(path: str, profile: str) -> Dict[LedgerKey, dict]:
    """Finished runs of `profile` in the ledger, by (profile, arm, fraction, seed)."""
    return {ledger_key(profile, r): r for r in read_ledger(path) if r.get("profile") == profile and "error" not in r}


def add_to_ledger(path: str, profile: str, row: dict, commit: str) -> None:
    """Add (or replace) one finished run, with the profile and the commit that trained it (the caller adds the
    device: a seed's arms trained on different machines are paired, but not bit for bit comparable)."""
    if "error" in row:
        return
    runs = [r for r in read_ledger(path) if ledger_key(r.get("profile"), r) != ledger_key(profile, row)]
    runs.append({**row, "profile": profile, "commit": commit})
    runs.sort(key=lambda r: (str(r["profile"]), str(r["fraction"]), r.get("seed") if r.get("seed") is not None
                             else -1, str(r["arm"])))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json({"about": "finished runs of nnUNetv2_qg_benchmark --ledger (nnunet_qg/benchmark/ledger.py)",
                       "runs": runs}, path)
