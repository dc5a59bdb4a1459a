"""Section title -> body pairs from Sphinx HTML, and the extra training data of the text plug-in runs."""
import gzip
import json

import pytest

from lsb_mm_experiments.datasets import sphinx_docs
from lsb_mm_experiments.datasets.sphinx_docs import load_doc_sections, parse_sphinx_sections
from lsb_mm.errors import InputError


def words(tag: str, n: int = 40) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def page(*sections: str) -> str:
    return ("<html><head><title>t</title><script>var junk = 1;</script></head><body>"
            "<section data-toggle='wy-nav-shift'><nav>sidebar words</nav>" + "".join(sections) + "</section></body></html>")


def section(anchor: str, title: str, body: str, *children: str, level: int = 2) -> str:
    return (f'<section id="{anchor}"><h{level}>{title}<a class="headerlink" href="#{anchor}">¶</a></h{level}>'
            f"<p>{body}</p>" + "".join(children) + "</section>")


def test_sections_keep_their_own_text_only():
    html = page(section("top", "2.1. The <code>os</code> module", words("top"),
                        section("child", "Child part", words("kid"), level=3), level=1))
    got = {s.anchor: s for s in parse_sphinx_sections(html, "p.html")}
    assert set(got) == {"top", "child"}
    assert got["top"].title == "The os module"  # numbering and the headerlink's pilcrow go
    assert got["top"].body == words("top") and "kid0" not in got["top"].body
    assert got["child"].body == words("kid") and got["child"].path == "p.html"
    assert all("sidebar" not in s.body and "junk" not in s.body for s in got.values())


def test_blocks_are_separated_and_unanchored_sections_ignored():
    html = page('<section><h2>No id</h2><p>lost words</p></section>',
                '<section id="a"><h2>Blocks</h2><p>one</p><p>two</p><ul><li>three</li></ul></section>')
    (s,) = parse_sphinx_sections(html)
    assert s.title == "Blocks" and s.body == "one two three"


@pytest.fixture
def doc_tree(tmp_path):
    root = tmp_path / "html"
    (root / "library").mkdir(parents=True)
    (root / "library" / "a.html").write_text(page(
        section("s1", "Unique one", words("u")), section("s2", "Examples", words("x")),
        section("s3", "Too short", "few words here")), encoding="utf-8")
    (root / "b.html.gz").write_bytes(gzip.compress(page(
        section("s4", "examples", words("y")), section("s5", "Unique two", words("v"))).encode()))
    (root / "genindex.html").write_text(page(section("g", "Index", words("g"))), encoding="utf-8")
    return root


def test_load_drops_short_sections_and_repeated_titles(doc_tree):
    kept, counts = load_doc_sections(roots=[str(doc_tree)])
    assert sorted(s.title for s in kept) == ["Unique one", "Unique two"]  # gz pages read, the index skipped
    assert counts == {"pages": 2, "sections": 5, "short_dropped": 1, "repeated_title_dropped": 2, "kept": 2}


def test_missing_and_unknown_packages_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sphinx_docs.DOC_PACKAGES, "python3-doc", str(tmp_path / "nothing-*" / "html"))
    with pytest.raises(InputError, match="apt-get install python3-doc"):
        load_doc_sections(["python3-doc"])
    with pytest.raises(InputError, match="unknown documentation package 'perl-doc'"):
        load_doc_sections(["perl-doc"])
    with pytest.raises(InputError, match="does not exist"):
        load_doc_sections(roots=[str(tmp_path / "absent")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "p.html").write_text(page(section("a", "Short", "too few")), encoding="utf-8")
    with pytest.raises(InputError, match="no section with a unique title"):
        load_doc_sections(roots=[str(tmp_path / "empty")])


def test_extra_training_data_stays_on_the_training_side(tmp_path):
    from lsb_mm.files import iter_jsonl, write_jsonl
    from lsb_mm_experiments.plugin import PluginExperiment, plugin_train_files

    own, extra = tmp_path / "train.jsonl", tmp_path / "docs.jsonl"
    write_jsonl(str(own), ({"query": f"q{i}-{k}", "pos": [f"page {i}"]} for i in range(20) for k in range(3)))
    write_jsonl(str(extra), ({"query": f"d{i}", "pos": [f"section {i}"]} for i in range(7)))
    exp = PluginExperiment("text-docs", "text", "m", "m", {}, str(own), [], {}, extra_train=str(extra))
    train, held = plugin_train_files(exp, str(tmp_path / "w"), seed=1, val_fraction=0.25)
    train_docs = {r["pos"][0] for _, r in iter_jsonl(train)}
    held_docs = {r["pos"][0] for _, r in iter_jsonl(held)}
    assert len(held_docs) == 5 and all(d.startswith("page") for d in held_docs)  # validation: own documents only
    assert not train_docs & held_docs and {f"section {i}" for i in range(7)} <= train_docs
    assert len(list(iter_jsonl(train))) == 15 * 3 + 7
    again, _ = plugin_train_files(exp, str(tmp_path / "w2"), seed=1, val_fraction=0.25)
    assert open(again).read() == open(train).read()  # seeded
    other, _ = plugin_train_files(exp, str(tmp_path / "w3"), seed=2, val_fraction=0.25)
    assert open(other).read() != open(train).read()
    plain = PluginExperiment("text", "text", "m", "m", {}, str(own), [], {})
    assert plugin_train_files(plain, str(tmp_path / "w4"), 0, 0.25) == (str(own), None)  # the trainer carves it
    assert json.loads(open(held).readline())["pos"][0].startswith("page")
