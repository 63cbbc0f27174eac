"""The conversations library on a real folder of files written by app/conversation_io.py's save (the
format ChatController.save writes), with a corrupt file and a foreign JSON file among them."""
from __future__ import annotations

import json
import os

import pytest

from app import conversation_io
from app.library import Library, default_folder, derive_title, matches, read


def write(folder, name, messages, system="", title=None, mtime=None):
    path = folder / f"{name}.json"
    conversation_io.save(path, system, messages, model="tiny")
    if title is not None:  # the branch-tree format's top-level title (issue 20)
        data = json.loads(path.read_text())
        data["title"] = title
        path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "conversations"
    f.mkdir()
    write(f, "old", [{"role": "user", "content": "What is the capital of France?\nBe brief."},
                     {"role": "assistant", "content": "Paris."}], mtime=1_000_000)
    write(f, "mid", [{"role": "user", "content": "Add two numbers"},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}]},
                     {"role": "tool", "name": "calculator", "content": "4"},
                     {"role": "assistant", "content": "It is 4."}], title="Sums", mtime=2_000_000)
    (f / "broken.json").write_text('{"format": "glassbox-conversation/1", "messages": [', encoding="utf-8")
    os.utime(f / "broken.json", (3_000_000, 3_000_000))
    (f / "foreign.json").write_text('{"hello": 1}', encoding="utf-8")
    os.utime(f / "foreign.json", (500_000, 500_000))
    return f


def test_lists_newest_first_with_titles_counts_and_unreadable_files(folder):
    entries = Library(folder).entries()
    assert [e.path.name for e in entries] == ["broken.json", "mid.json", "old.json", "foreign.json"]
    broken, mid, old, foreign = entries
    assert not broken.readable and "not a readable conversation" in broken.error and broken.title == "broken"
    assert not foreign.readable and "not a Glassbox conversation" in foreign.error
    assert (mid.title, mid.messages, mid.modified) == ("Sums", 4, 2_000_000)
    assert (old.title, old.messages) == ("What is the capital of France?", 2)  # first user line, no title field


def test_a_changed_file_is_read_again(folder):
    library = Library(folder)
    assert library.entries()[2].messages == 2
    write(folder, "old", [{"role": "user", "content": "Hi"}], mtime=4_000_000)
    first = library.entries()[0]
    assert (first.path.name, first.title, first.messages) == ("old.json", "Hi", 1)


def test_new_path_is_fresh_and_a_save_there_joins_the_list(folder):
    library = Library(folder)
    a = library.new_path()
    write(folder, a.stem, [{"role": "user", "content": "New one"}])
    b = library.new_path()
    assert a.parent == folder and b != a and not b.exists()
    assert library.entries()[0].title == "New one"


def test_rename_writes_the_title_atomically_and_keeps_everything_else(folder):
    library = Library(folder)
    path = folder / "mid.json"
    before = json.loads(path.read_text())
    library.rename(path, "  Arithmetic   with tools ")
    after = json.loads(path.read_text())
    assert after.pop("title") == "Arithmetic with tools"
    before.pop("title")
    assert after == before
    assert read(path).title == "Arithmetic with tools"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        library.rename(folder / "broken.json", "x")  # never rewrites a file it cannot read
    with pytest.raises(ValueError):
        library.rename(path, "   ")


def test_delete_moves_to_the_trash_and_restore_brings_it_back(folder):
    library = Library(folder)
    trashed = library.delete(folder / "old.json")
    assert not (folder / "old.json").exists() and trashed.read_text().startswith("{")
    assert "old.json" not in [e.path.name for e in library.entries()]
    library.delete(folder / "broken.json")  # unreadable files can be removed too
    restored = library.restore(trashed)
    assert restored == folder / "old.json"
    assert library.entries()[1].path.name == "old.json"  # its own time: it sorts where it was


def test_search_titles_and_message_text_in_any_case(folder):
    library = Library(folder)
    assert [e.path.name for e in library.search("PARIS")] == ["old.json"]
    assert [e.path.name for e in library.search("sums")] == ["mid.json"]
    assert [e.path.name for e in library.search("calculator")] == ["mid.json"]  # a tool call's name
    assert library.search("nowhere") == []
    assert len(library.search("")) == 4
    assert matches("fr", "Capital of France", "") and not matches("x", "a", "b")


def test_titles_derived_and_default_folder_beside_the_autosave(monkeypatch, tmp_path):
    assert derive_title([{"role": "system", "content": "s"}, {"role": "user", "content": "  \n"}]) == \
        "Untitled conversation"
    assert derive_title([{"role": "user", "content": "x" * 100}]).endswith("…")
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(tmp_path))
    assert default_folder() == tmp_path / "conversations"
    assert Library(tmp_path / "missing").entries() == []
