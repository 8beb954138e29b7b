"""top-per-node: the k edges with the highest score, at most one adapter into each node.

A placement heuristic for graft, in Python. graft runs it as a `command` stage (see
python.toml beside this file):

    python top_per_node.py --probe DIR --out DIR [--with DIR] [--score effective_rank]
                           [--budgets 1,2,3]

It reads DIR/probe.parquet of the probe artifact (one row per edge (i, j) of the residual
graph: i, j, kind and the scores rank, frobenius, spectral, nuclear, stable_rank,
effective_rank) and writes OUT/proposals.parquet with one row per budget k: the k edges of
highest score such that no two add into the same node j. A budget larger than the number of
nodes cannot be met and is skipped.

graft checks the table against the probed model's graph and computes placement_id,
adapters, budget, trainable_params and forward_flops itself, so the script writes only what
it decides: heuristic, score, draw and edges, and how the heuristic describes itself: label
(the report's legend), params (its parameters as a JSON object) and budgeted (one placement
per budget, so the report draws its budget curve). graft would fill those three in (the
name, {} and whether the rows span two budgets) if they were left out. With --with DIR (the propose stage's
artifact) the rows of DIR/proposals.parquet come first, so the fine-tune stage trains gga,
top-k and the rest beside this heuristic.
"""

import argparse
import json
import os
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

NAME = "top-per-node"

# The columns a heuristic decides; graft derives the others.
SCHEMA = pa.schema(
    [
        ("heuristic", pa.string()),
        ("label", pa.string()),
        ("params", pa.string()),
        ("budgeted", pa.bool_()),
        ("score", pa.string()),
        ("draw", pa.int64()),
        ("edges", pa.list_(pa.struct([("i", pa.int32()), ("j", pa.int32())]))),
    ]
)


def top_per_node(probe: pd.DataFrame, k: int, score: str):
    """The k best edges by `score`, at most one per output node j; None if k > nodes."""
    # Ties on the score break by the Frobenius norm, then by position for determinism.
    ranked = probe.sort_values(
        [score, "frobenius", "i", "j"], ascending=[False, False, True, True]
    )
    chosen, used = [], set()
    for i, j in zip(ranked["i"], ranked["j"]):
        if j in used:
            continue
        chosen.append((int(i), int(j)))
        used.add(j)
        if len(chosen) == k:
            return chosen
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", required=True, help="the probe artifact's directory")
    ap.add_argument("--out", required=True, help="where to write proposals.parquet")
    ap.add_argument("--with", dest="with_", help="a proposals artifact whose rows to keep")
    ap.add_argument("--score", default="effective_rank")
    ap.add_argument("--budgets", default="1,2,3")
    args = ap.parse_args()

    probe = pd.read_parquet(os.path.join(args.probe, "probe.parquet"))
    if args.score not in probe.columns:
        print(f"--score {args.score}: not a column of probe.parquet", file=sys.stderr)
        return 2
    rows = []
    for k in sorted({int(b) for b in args.budgets.split(",")}):
        edges = top_per_node(probe, k, args.score)
        if edges is None:
            print(f"{NAME}: budget {k} skipped: more than one adapter per node", file=sys.stderr)
            continue
        rows.append(
            {
                "heuristic": NAME,
                "label": f"{NAME} by {args.score}",
                "params": json.dumps({"score": args.score}, sort_keys=True),
                "budgeted": True,
                "score": args.score,
                "draw": 0,
                "edges": [{"i": i, "j": j} for i, j in edges],
            }
        )
    mine = pa.Table.from_pylist(rows, schema=SCHEMA)
    tables = [mine]
    if args.with_:
        theirs = pq.read_table(
            os.path.join(args.with_, "proposals.parquet"), columns=SCHEMA.names
        )
        tables.insert(0, theirs.cast(SCHEMA))
    table = pa.concat_tables(tables)
    pq.write_table(table, os.path.join(args.out, "proposals.parquet"))
    print(f"{NAME}: {len(rows)} placements, {table.num_rows} rows in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
