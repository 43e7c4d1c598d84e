"""Hostile or unusual source trees: links to folders and link loops, unreadable folders, trees with nothing
packable. Packed right, or skipped with a reason; a tree with nothing to pack fails with the reasons."""

import errno
import os
from pathlib import Path

import pytest

from data.packed import read_json
from packs.prepare import prepare
from tests.image_files import write_image
from tests.pack_files import skipped_lines
from tests.png_by_hand import tiny_png


def test_links_to_folders_are_followed_once_per_real_folder(tmp_path):
    src = tmp_path / "src"
    write_image(src / "apple/a.png", tiny_png())
    write_image(src / "pear/p.png", tiny_png())
    write_image(tmp_path / "elsewhere/e.png", tiny_png())
    (src / "apple/ext").symlink_to(tmp_path / "elsewhere")
    (src / "apple/loop").symlink_to(".")  # apple/loop/loop/loop/... without a check
    (src / "apple/up").symlink_to("..")  # back to src: apple, pear, apple, ...
    (src / "pear/ext_again").symlink_to(tmp_path / "elsewhere")
    (src / "pear/to_apple").symlink_to("../apple")
    prepare(src, tmp_path / "pack", None, None, workers=1)
    assert read_json(tmp_path / "pack/meta.json")["splits"]["train"] == {"images": 3, "skipped": 4}
    assert read_json(tmp_path / "pack/train/plan.json")["images"] == 3  # apple/a.png, apple/ext/e.png, pear/p.png
    assert skipped_lines(tmp_path / "pack") == [
        ["train", "apple/loop", "a link loop, back to apple"],
        ["train", "apple/up", f"a link loop, back to {src}"],
        ["train", "pear/ext_again", "a second way to apple/ext, packed there"],
        ["train", "pear/to_apple", "a second way to apple, packed there"],
    ]


def refuse_to_list(monkeypatch, *folders: Path) -> None:
    """Make os.scandir (which os.walk lists with) fail on `folders` as a folder of mode 000 does for a non-root user."""
    scandir = os.scandir

    def guarded(path="."):
        if Path(path) in folders:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)


def test_an_unreadable_folder_is_listed_with_its_reason(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_image(src / "apple/a.png", tiny_png())
    write_image(src / "pear/locked/p.png", tiny_png())
    refuse_to_list(monkeypatch, src / "pear/locked")
    prepare(src, tmp_path / "pack", None, None, workers=1)
    reason = f"PermissionError: [Errno 13] Permission denied: '{src / 'pear/locked'}'"
    assert skipped_lines(tmp_path / "pack") == [["train", "pear/locked", reason]]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists a folder of mode 000 anyway (the test above injects it)")
def test_a_folder_of_mode_000_is_listed_with_its_reason(tmp_path):
    src = tmp_path / "src"
    write_image(src / "apple/a.png", tiny_png())
    write_image(src / "pear/locked/p.png", tiny_png())
    (src / "pear/locked").chmod(0)
    try:
        prepare(src, tmp_path / "pack", None, None, workers=1)
    finally:
        (src / "pear/locked").chmod(0o755)
    [(split, name, reason)] = skipped_lines(tmp_path / "pack")
    assert (split, name) == ("train", "pear/locked") and reason.startswith("PermissionError")


def test_a_tree_of_only_bad_files_fails_with_the_reasons(tmp_path):
    src = tmp_path / "src"
    write_image(src / "apple/notes.jpg", b"not an image\n")
    write_image(src / "pear/empty.png", b"")
    why = r"(?s)train: not one image could be decoded; .*skipped.txt lists the 2.*apple/notes.jpg: "
    with pytest.raises(ValueError, match=why):
        prepare(src, tmp_path / "pack", None, None, workers=1)
    assert [name for _, name, _ in skipped_lines(tmp_path / "pack")] == ["apple/notes.jpg", "pear/empty.png"]
    assert skipped_lines(tmp_path / "pack")[1][2] == "ValueError: empty file"


def test_a_tree_with_no_readable_folder_fails_with_the_reasons(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_image(src / "apple/a.png", tiny_png())
    write_image(src / "pear/p.png", tiny_png())
    refuse_to_list(monkeypatch, src / "apple", src / "pear")
    with pytest.raises(ValueError, match=r"train: no images to pack; for example:\n  apple: PermissionError.*\n  pear"):
        prepare(src, tmp_path / "pack", None, None, workers=1)
