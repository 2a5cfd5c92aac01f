"""hpccnn.common.tables, the one formatter of bench.md, nodes.md, report.md and submit's grid table."""

import math

from hpccnn.common import tables


def test_markdown_table_has_its_separator_keeps_empty_cells_and_ends_its_last_line():
    header, rows = tables.cells({"model": tables.key("model"), "images/s": tables.key("ips", ",.1f"),
                                 "vs 1 rank": lambda r: "" if r["ratio"] is None else f"{r['ratio']:.2f}×"},
                                [{"model": "cnn_v3", "ips": 3945.25, "ratio": None},
                                 {"model": "alexnet64", "ips": 668.9, "ratio": 1.0}])
    assert tables.markdown(header, rows) == ("| model | images/s | vs 1 rank |\n|---|---|---|\n"
                                             "| cnn_v3 | 3,945.2 |  |\n| alexnet64 | 668.9 | 1.00× |\n")
    assert tables.markdown(["class"], []) == "| class |\n|---|\n"


def test_text_table_starts_every_column_at_the_same_place_on_every_line():
    lines = tables.text(["point", "status", "ranks"], [["00_relu", "completed", 2], ["01_sigmoid_long", "-", "-"]])
    lines = lines.splitlines()
    assert len(lines) == 3 and lines[0].startswith("point ")
    for word in ("status", "ranks"):
        column = lines[0].index(word)
        assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)


def test_a_missing_number_is_a_dash_and_others_keep_their_kind():
    assert [tables.number(v) for v in (None, math.nan, 0.91234, 12, "completed")] == \
        ["-", "-", "0.9123", "12", "completed"]
    assert tables.number(12.6, 0) == "13" and tables.number(0.5, 1) == "0.5"
