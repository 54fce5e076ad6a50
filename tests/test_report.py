"""The report writer: self-contained HTML and Markdown from sections, tables and plots."""

import base64
import re

import torch

from sim import report as rep


def test_markdown_to_html_tables_lists_code():
    md = "intro `x` **bold**\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n- one\n- two\n\n```\nraw <t>\n```\n### small"
    out = rep.markdown_to_html(md)
    assert "<p>intro <code>x</code> <b>bold</b></p>" in out
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;2&gt;</td></tr></table>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out
    assert "<pre>raw &lt;t&gt;</pre>" in out and "<h3>small</h3>" in out


def test_write_report_is_self_contained(tmp_path):
    png = rep.plot_image_grid([("a", torch.rand(3, 8, 8)), ("b", torch.zeros(3, 8, 8))], tmp_path / "grid.png")
    rows = [{"core": "topk", "n": 3}, {"core": "dot", "n": 4}]
    table = rep.rows_table(rows, [("core", "core"), ("twice", lambda r: 2 * r["n"])])
    assert table.splitlines()[2:] == ["| topk | 6 |", "| dot | 8 |"]
    md, html = rep.write_report(tmp_path, "t", [("S", table, [png])])
    page = html.read_text()
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(data) == png.read_bytes()  # the picture is inside the page
    assert "<td>topk</td><td>6</td>" in page and "](grid.png)" in md.read_text()


def test_error_map_and_plots(tmp_path):
    from golden.accel.generate import load_model
    _, var = load_model("tiny")
    errors = rep.linear_error_map(var, "mxfp4", seed=0)
    scales = {si for si, _ in errors}
    assert scales == set(range(len(var.patch_nums)))
    assert any(name.endswith("ffn.fc2") for _, name in errors)
    # E2M1 elements: a few percent to tens of percent relative error, never zero, never wild
    assert all(1e-3 < e < 1.0 for e in errors.values()), errors
    rep.plot_error_map(errors, tmp_path / "e.png")
    rep.plot_topk_k([{"k": 1, "unordered": False, "cycles": 9000}, {"k": 9, "unordered": True, "cycles": 8000}],
                    4096, tmp_path / "k.png")
    rep.plot_attention_density([{"kept": 8, "blocks": 8, "cycles": 300, "floor": 256},
                                {"kept": 4, "blocks": 8, "cycles": 160, "floor": 128}], tmp_path / "a.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("e.png", "k.png", "a.png"))
