"""Snippets of the other open documents: which windows are chosen, how they read, what they cost."""

from __future__ import annotations

from dgemma_lsp.context import approx_token_count
from dgemma_lsp.neighbours import WINDOW_LINES, OpenDocument, OpenFiles

FILLER = "".join(f"unrelated_{i} = 0\n" for i in range(3 * WINDOW_LINES))
PRICES = (
    "def apply_discount(price, discount_rate):\n"
    "    rounded_price = round(price * (1 - discount_rate), 2)\n"
    "    return max(rounded_price, minimum_price)\n"
)
# The lines above the cursor use the names PRICES defines; the cursor line itself is being typed.
PREFIX = "price = item.price\ndiscount_rate = customer.discount_rate\nrounded_price = apply_"


def doc(name: str, text: str, language: str | None = "python") -> OpenDocument:
    return OpenDocument(f"file:///w/{name}", name, language, text)


def test_the_window_sharing_names_with_the_lines_above_is_chosen_commented_out() -> None:
    others = [doc("filler.py", FILLER), doc("prices.py", FILLER + PRICES + FILLER)]
    [snippet] = OpenFiles().snippets(PREFIX, "python", others, 512)
    lines = snippet.splitlines()
    assert lines[0] == "# Compare this snippet from prices.py:"
    assert all(line == "#" or line.startswith("# ") for line in lines)
    assert "# def apply_discount(price, discount_rate):" in lines
    assert "unrelated_" not in snippet or "apply_discount" in snippet  # a window around PRICES
    assert snippet.endswith("\n")


def test_languages_other_than_the_documents_family_are_left_out() -> None:
    js = "function applyDiscount(price, discountRate) {\n  return Math.round(price * discountRate);\n}\n"
    ts = [doc("prices.js", js, "javascript"), doc("prices.py", PRICES, "python")]
    [snippet] = OpenFiles().snippets("const price = 1;\nconst discountRate = 2;\nx", "typescript", ts, 512)
    assert snippet.startswith("// Compare this snippet from prices.js:")
    assert OpenFiles().snippets(PREFIX, "python", [doc("prices.js", PRICES, "javascript")], 512) == []
    # Many newer documents of another language do not crowd out an older one of this language.
    newer = [doc(f"page{i}.js", PRICES, "javascript") for i in range(30)]
    assert OpenFiles().snippets(PREFIX, "python", [*newer, doc("prices.py", PRICES)], 512) != []
    # No line comment known for the language: nothing (a snippet would read as code).
    assert OpenFiles().snippets(PREFIX, "markdown", [doc("a.md", PRICES, "markdown")], 512) == []


def test_the_token_budget_holds_and_the_most_similar_comes_last() -> None:
    close = doc("close.py", PRICES)
    loose = doc("loose.py", "price = 1\nvalue = price + offset + scale + width\n")
    chosen = OpenFiles().snippets(PREFIX, "python", [loose, close], 512)
    assert [s.splitlines()[0] for s in chosen] == [
        "# Compare this snippet from loose.py:",
        "# Compare this snippet from close.py:",
    ]
    one = approx_token_count(chosen[-1])
    assert OpenFiles().snippets(PREFIX, "python", [loose, close], one) == chosen[-1:]
    assert "close.py" not in "".join(OpenFiles().snippets(PREFIX, "python", [loose, close], one - 1))
    assert OpenFiles().snippets(PREFIX, "python", [loose, close], 0) == []
    many = [doc(f"copy{i}.py", FILLER + PRICES) for i in range(10)]
    found = OpenFiles().snippets(PREFIX, "python", many, 400)
    assert found and sum(approx_token_count(s) for s in found) <= 400


def test_no_snippets_without_names_above_the_cursor_or_in_binary_documents() -> None:
    others = [doc("prices.py", PRICES)]
    assert OpenFiles().snippets("rounded_price = apply_", "python", others, 512) == []  # first line
    assert OpenFiles().snippets(PREFIX, "python", [doc("blob.py", PRICES + "\x00")], 512) == []


def test_a_near_copy_of_the_lines_above_is_left_out() -> None:
    # Another version of the same file (a diff view's document, say): the model would repeat it.
    copy = doc("cart_old.py", PREFIX.rsplit("\n", 1)[0] + "\ntotal = price * (1 - discount_rate)\n")
    assert OpenFiles().snippets(PREFIX, "python", [copy], 512) == []
    assert OpenFiles().snippets(PREFIX, "python", [copy, doc("prices.py", PRICES)], 512) != []


def test_a_changed_document_is_read_again() -> None:
    files = OpenFiles()
    assert files.snippets(PREFIX, "python", [doc("prices.py", FILLER)], 512) == []
    assert files.snippets(PREFIX, "python", [doc("prices.py", FILLER + PRICES)], 512) != []
    files.forget("file:///w/prices.py")
    assert files.snippets(PREFIX, "python", [doc("prices.py", FILLER)], 512) == []


def test_a_copy_of_this_file_is_left_out_wherever_its_windows_fall() -> None:
    # Windows step 10 lines, the cursor anywhere: a copy's window half made of the lines above scored
    # about 0.33, under the near-copy bound, and went in.
    source = "".join(f"total_{i} = price_{i} * quantity_{i} + shipping_{i % 7}\n" for i in range(200))
    lines = source.splitlines(keepends=True)
    for cursor in (95, 100, 103):
        prefix = "".join(lines[:cursor])
        assert OpenFiles().snippets(prefix, "python", [doc("copy/cart.py", source)], 512) == [], cursor


def test_files_of_the_same_name_are_told_apart() -> None:
    a = OpenDocument("file:///w/a/prices.py", "prices.py", "python", PRICES)
    b = OpenDocument("file:///w/b/prices.py", "prices.py", "python", PRICES.replace("minimum_price", "floor"))
    assert len(OpenFiles().snippets(PREFIX, "python", [a, b], 512)) == 2  # one was taken for the other
