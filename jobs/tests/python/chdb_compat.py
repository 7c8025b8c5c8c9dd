"""Runs the project's ClickHouse SQL on a modern engine: chdb-core (ClickHouse
26.9 in-process). Input: a JSON file {"statements": [sql...], "queries":
[{"name", "sql"}...]}. Statements run in order in one session database; each
query's TabSeparated output is printed as one JSON object {name: text}.
A failure exits 1 naming the statement or query and the engine's error."""

import json
import os
import sys
import tempfile

os.environ.setdefault("TZ", "UTC")

from chdb import session  # noqa: E402


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        s.query("CREATE DATABASE IF NOT EXISTS compat")
        s.query("USE compat")
        version = str(s.query("SELECT version()", "TSV")).strip()
        for i, sql in enumerate(spec["statements"]):
            try:
                s.query(sql)
            except Exception as e:  # the engine's error, with the statement
                print(f"statement {i} failed on ClickHouse {version}: {e}\n{sql}", file=sys.stderr)
                return 1
        out = {"__version__": version}
        for q in spec["queries"]:
            try:
                out[q["name"]] = str(s.query(q["sql"], "TSV"))
            except Exception as e:
                print(f"query {q['name']} failed on ClickHouse {version}: {e}\n{q['sql']}", file=sys.stderr)
                return 1
        s.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
