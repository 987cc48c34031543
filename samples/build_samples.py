"""Rebuild the quick-start corpus in ``samples/corpus`` (the result is committed; see README.md).

Everything is made here, offline, from: text written for this repository or in the public
domain, photos shipped in PyPI packages under open licences, and document images / PDFs
rendered by this script (PIL and a hand-written PDF with a real text layer).

    .venv/bin/python samples/build_samples.py
"""

from __future__ import annotations

import os
import shutil
import textwrap
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
OUT = HERE / "corpus"

NOTES = {
    # public domain (published before 1900)
    "gettysburg-address.txt": (
        "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
        "conceived in Liberty, and dedicated to the proposition that all men are created equal. "
        "Now we are engaged in a great civil war, testing whether that nation, or any nation so "
        "conceived and so dedicated, can long endure.\n\n"
        "(Abraham Lincoln, Gettysburg, 1863. Public domain.)"),
    "moby-dick-opening.txt": (
        "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money "
        "in my purse, and nothing particular to interest me on shore, I thought I would sail about a "
        "little and see the watery part of the world.\n\n"
        "(Herman Melville, Moby-Dick, 1851. Public domain.)"),
    "pride-and-prejudice-opening.txt": (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.\n\n(Jane Austen, Pride and Prejudice, 1813. Public domain.)"),
    "origin-of-species-entangled-bank.txt": (
        "It is interesting to contemplate an entangled bank, clothed with many plants of many kinds, "
        "with birds singing on the bushes, with various insects flitting about, and with worms "
        "crawling through the damp earth, and to reflect that these elaborately constructed forms, "
        "so different from each other, and dependent on each other in so complex a manner, have all "
        "been produced by laws acting around us.\n\n"
        "(Charles Darwin, On the Origin of Species, 1859. Public domain.)"),
    "walden-woods.txt": (
        "I went to the woods because I wished to live deliberately, to front only the essential facts "
        "of life, and see if I could not learn what it had to teach, and not, when I came to die, "
        "discover that I had not lived.\n\n(Henry David Thoreau, Walden, 1854. Public domain.)"),
    # written for this repository (CC0)
    "llamas.md": (
        "# Llamas\n\nThe llama is a domesticated South American camelid, kept by Andean peoples as a "
        "pack animal and for its soft wool. Llamas live in herds, hum to each other, and can carry "
        "about a quarter of their body weight over mountain trails."),
    "green-tea.md": (
        "# Brewing green tea\n\nUse water well below boiling, around 70 to 80 degrees Celsius, and steep "
        "the leaves for one to two minutes. Boiling water and long steeping make green tea bitter."),
    "bicycle-chain.txt": (
        "Bicycle maintenance note: clean the chain with a rag and degreaser every few hundred "
        "kilometres, then put one drop of oil on each roller and wipe off the excess. A dry, rusty "
        "chain wears the cassette and the chainrings quickly."),
}

CAPTIONS = {  # sidecars written for this repository (CC0): the photo and its caption are one item
    "grace-hopper.txt": "Portrait photograph of computer scientist Grace Hopper in a United States "
                        "Navy uniform.",
    "summer-palace-pagoda.txt": "A many-tiered Chinese pagoda with red columns and green roof tiles "
                                "on a wooded hill above a wide lake, on a hazy summer day.",
}

SCANS = {  # document-like images rendered here from text written for this repository (CC0)
    "bakery-receipt.png": [
        "CORNER BAKERY", "12 Mill Street", "", "2 x Croissant        5.00",
        "1 x Rye bread        4.20", "2 x Cappuccino       7.60", "", "TOTAL               16.80",
        "Paid by card - thank you!"],
    "lost-cat-poster.png": [
        "LOST CAT", "Grey tabby with white paws", "answers to the name Pepper",
        "last seen near the park gates", "REWARD - please call 555 0142"],
    "train-timetable.png": [
        "Airport Express timetable", "Central Station  06:10  07:10  08:10",
        "Harbour          06:18  07:18  08:18", "Airport Terminal 06:41  07:41  08:41",
        "Trains run every hour until midnight"],
}

PDF_PAGES = [  # written for this repository (CC0)
    ["Garden birds: a field guide", "",
     "The European robin has an orange-red breast and face.",
     "It sings all year round, even on winter nights under",
     "street lights, and defends its territory fiercely.", "",
     "The blue tit is small, with a blue cap and a yellow belly."],
    ["Feeding birds in winter", "",
     "Put out sunflower hearts, suet and fresh water when the",
     "ground is frozen. Clean feeders every week to stop disease,",
     "and place them near cover, away from cats."],
]

SCANNED_LETTER = [  # an image-only PDF (no text layer): found through OCR under text models
    "Minutes of the allotment society", "",
    "The committee agreed to buy a new water pump", "and to hold the harvest festival in October.",
    "Compost bins will be moved behind the shed."]


def font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def render_lines(lines: list[str], *, width: int = 720, size: int = 30) -> Image.Image:
    f = font(size)
    height = 60 + int(len(lines) * size * 1.5)
    img = Image.new("L", (width, height), 250)
    draw = ImageDraw.Draw(img)
    y = 30
    for line in lines:
        draw.text((36, y), line, fill=20, font=f)
        y += int(size * 1.5)
    return img


def pdf_with_text(pages: list[list[str]], *, font_size: int = 20, leading: int = 26) -> bytes:
    """A minimal PDF whose pages carry real text (Helvetica, a standard font): a text layer.

    The tests build dense pages with it too (a small ``font_size`` and ``leading``)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font_id = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    pages_id = add(b"")  # filled in below
    page_ids = []
    for lines in pages:
        ops = ["BT", f"/F1 {font_size} Tf", "60 780 Td", f"{leading} TL"]
        for line in lines:
            safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({safe}) Tj T*")
        ops.append("ET")
        stream = zlib.compress("\n".join(ops).encode("latin-1"))
        content_id = add(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_ids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 842] "
                            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                            % (pages_id, font_id, content_id)))
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))
    catalog_id = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog_id, xref)
    return bytes(out)


def main() -> None:
    import matplotlib
    import sklearn

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "notes").mkdir(parents=True)
    (OUT / "photos").mkdir()
    (OUT / "scans").mkdir()
    (OUT / "docs").mkdir()
    for name, text in NOTES.items():
        (OUT / "notes" / name).write_text(textwrap.dedent(text).strip() + "\n", encoding="utf-8")

    photos = {
        "grace-hopper.jpg": Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
        "summer-palace-pagoda.jpg": Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        "dahlia.jpg": Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
    }
    for name, src in photos.items():
        img = Image.open(src).convert("RGB")
        img.thumbnail((480, 480))
        img.save(OUT / "photos" / name, quality=85)
    for name, text in CAPTIONS.items():
        (OUT / "photos" / name).write_text(text + "\n", encoding="utf-8")

    for name, lines in SCANS.items():
        render_lines(lines).save(OUT / "scans" / name, optimize=True)

    (OUT / "docs" / "garden-birds.pdf").write_bytes(pdf_with_text(PDF_PAGES))
    letter = render_lines(SCANNED_LETTER, width=900, size=28).convert("RGB")
    letter.save(OUT / "docs" / "allotment-minutes-scan.pdf", "PDF", resolution=100)

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total / 1e3:.0f} kB, to {OUT}")


if __name__ == "__main__":
    os.chdir(HERE)
    main()
