"""Counts spans per service in Andon's Parquet segments with pyarrow, polars and
DuckDB, reading the files directly. Prints {"reader": {"service": count}} as JSON.

usage: interop.py SEGMENTS_DIR
"""

import glob
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow.compute as pc
import pyarrow.dataset as ds


def main() -> None:
    root = sys.argv[1]
    files = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    if not files:
        sys.exit(f"no segments under {root}")
    out = {}

    table = ds.dataset(files, format="parquet").to_table(columns=["service_name", "trace_id", "start_time", "attributes"])
    counts = table.group_by("service_name").aggregate([("trace_id", "count")])
    out["pyarrow"] = dict(zip(counts["service_name"].to_pylist(), counts["trace_id_count"].to_pylist()))
    assert pc.all(pc.equal(pc.utf8_length(table["trace_id"]), 32)).as_py(), "trace ids are 32 hex chars"

    frame = pl.scan_parquet(files).group_by("service_name").agg(pl.len().alias("n")).collect()
    out["polars"] = dict(zip(frame["service_name"].to_list(), frame["n"].to_list()))

    rows = duckdb.sql(
        f"SELECT service_name, count(*) FROM read_parquet({files!r}) GROUP BY 1"
    ).fetchall()
    out["duckdb"] = {name: n for name, n in rows}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
