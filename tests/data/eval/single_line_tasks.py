"""Writes single_line_tasks.jsonl: the project's own executable single-line infilling tasks.

HumanEval-Infilling's single-line format (the external benchmark's), on small problems written for this
project (not HumanEval's, nor derived from them): every non-blank line of a solved function's body is
cut out in turn; prompt and suffix are the rest of the file, and `check` runs the filled function.

    python tests/data/eval/single_line_tasks.py
    dgemma-lsp eval tests/data/eval/single_line_tasks.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

# (solved function, its tests)
PROBLEMS = [
    (
        '''def count_vowels(text):
    """Count the vowels (a, e, i, o, u, either case) in text.
    >>> count_vowels("Hello World")
    3
    """
    count = 0
    for char in text.lower():
        if char in "aeiou":
            count += 1
    return count
''',
        """def check(candidate):
    assert candidate("Hello World") == 3
    assert candidate("") == 0
    assert candidate("AEIOU xyz") == 5
""",
    ),
    (
        '''def second_largest(numbers):
    """Return the second largest distinct value in numbers, or None if there is none.
    >>> second_largest([4, 1, 4, 3])
    3
    """
    distinct = sorted(set(numbers), reverse=True)
    if len(distinct) < 2:
        return None
    return distinct[1]
''',
        """def check(candidate):
    assert candidate([4, 1, 4, 3]) == 3
    assert candidate([7, 7]) is None
    assert candidate([]) is None
    assert candidate([-1, -5, 0]) == -1
""",
    ),
    (
        '''def chunk(items, size):
    """Split items into consecutive lists of at most size elements.
    >>> chunk([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    chunks = []
    for start in range(0, len(items), size):
        chunks.append(items[start:start + size])
    return chunks
''',
        """def check(candidate):
    assert candidate([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert candidate([], 3) == []
    assert candidate([1, 2, 3], 3) == [[1, 2, 3]]
""",
    ),
    (
        '''def is_sorted(values):
    """True when values never decrease from one element to the next.
    >>> is_sorted([1, 2, 2, 5])
    True
    """
    for left, right in zip(values, values[1:]):
        if left > right:
            return False
    return True
''',
        """def check(candidate):
    assert candidate([1, 2, 2, 5]) is True
    assert candidate([3, 1]) is False
    assert candidate([]) is True
    assert candidate([1, 2, 3, 0]) is False
""",
    ),
    (
        '''def word_frequencies(text):
    """Map each lower-cased word of text to how often it occurs.
    >>> word_frequencies("the cat the hat")
    {'the': 2, 'cat': 1, 'hat': 1}
    """
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
''',
        """def check(candidate):
    assert candidate("the cat the hat") == {"the": 2, "cat": 1, "hat": 1}
    assert candidate("") == {}
    assert candidate("A a") == {"a": 2}
""",
    ),
    (
        '''def flatten(nested):
    """Flatten a list of lists by one level.
    >>> flatten([[1, 2], [], [3]])
    [1, 2, 3]
    """
    result = []
    for inner in nested:
        result.extend(inner)
    return result
''',
        """def check(candidate):
    assert candidate([[1, 2], [], [3]]) == [1, 2, 3]
    assert candidate([]) == []
    assert candidate([["a"], ["b", "c"]]) == ["a", "b", "c"]
""",
    ),
    (
        '''def celsius_table(temperatures):
    """Convert Fahrenheit temperatures to Celsius, rounded to one decimal.
    >>> celsius_table([32, 212])
    [0.0, 100.0]
    """
    table = []
    for fahrenheit in temperatures:
        celsius = (fahrenheit - 32) * 5 / 9
        table.append(round(celsius, 1))
    return table
''',
        """def check(candidate):
    assert candidate([32, 212]) == [0.0, 100.0]
    assert candidate([]) == []
    assert candidate([50]) == [10.0]
""",
    ),
    (
        '''def running_max(numbers):
    """The largest value seen so far, at every position of numbers.
    >>> running_max([3, 1, 4, 1, 5])
    [3, 3, 4, 4, 5]
    """
    result = []
    best = None
    for n in numbers:
        if best is None or n > best:
            best = n
        result.append(best)
    return result
''',
        """def check(candidate):
    assert candidate([3, 1, 4, 1, 5]) == [3, 3, 4, 4, 5]
    assert candidate([]) == []
    assert candidate([-2, -3]) == [-2, -2]
""",
    ),
    (
        '''def capitalize_words(sentence):
    """Upper-case the first letter of every word, keeping single spaces between words.
    >>> capitalize_words("hello big world")
    'Hello Big World'
    """
    words = sentence.split()
    capitalized = [word[0].upper() + word[1:] for word in words]
    return " ".join(capitalized)
''',
        """def check(candidate):
    assert candidate("hello big world") == "Hello Big World"
    assert candidate("") == ""
    assert candidate("a") == "A"
""",
    ),
    (
        '''def digit_sum(n):
    """Sum of the decimal digits of the integer n (its sign ignored).
    >>> digit_sum(-493)
    16
    """
    n = abs(n)
    total = 0
    while n > 0:
        total += n % 10
        n //= 10
    return total
''',
        """def check(candidate):
    assert candidate(-493) == 16
    assert candidate(0) == 0
    assert candidate(1001) == 2
""",
    ),
    (
        '''def merge_sorted(left, right):
    """Merge two sorted lists into one sorted list.
    >>> merge_sorted([1, 4], [2, 3, 5])
    [1, 2, 3, 4, 5]
    """
    merged = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    return merged + left[i:] + right[j:]
''',
        """def check(candidate):
    assert candidate([1, 4], [2, 3, 5]) == [1, 2, 3, 4, 5]
    assert candidate([], [1]) == [1]
    assert candidate([2, 2], [1, 2]) == [1, 2, 2, 2]
""",
    ),
    (
        '''def first_repeated(items):
    """The first item that appears a second time while scanning items, or None.
    >>> first_repeated(["a", "b", "c", "b", "a"])
    'b'
    """
    seen = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None
''',
        """def check(candidate):
    assert candidate(["a", "b", "c", "b", "a"]) == "b"
    assert candidate([1, 2, 3]) is None
    assert candidate([5, 5]) == 5
""",
    ),
    (
        '''def average(numbers):
    """Arithmetic mean of numbers; 0.0 for an empty list.
    >>> average([2, 4, 9])
    5.0
    """
    if not numbers:
        return 0.0
    return sum(numbers) / len(numbers)
''',
        """def check(candidate):
    assert candidate([2, 4, 9]) == 5.0
    assert candidate([]) == 0.0
    assert candidate([1]) == 1.0
""",
    ),
    (
        '''def remove_duplicates(items):
    """Items without repeats, in the order of their first appearance.
    >>> remove_duplicates([3, 1, 3, 2, 1])
    [3, 1, 2]
    """
    seen = set()
    unique = []
    for item in items:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique
''',
        """def check(candidate):
    assert candidate([3, 1, 3, 2, 1]) == [3, 1, 2]
    assert candidate([]) == []
    assert candidate(["x", "x"]) == ["x"]
""",
    ),
    (
        '''def is_prime(n):
    """True when n is a prime number.
    >>> is_prime(13)
    True
    """
    if n < 2:
        return False
    for divisor in range(2, int(n ** 0.5) + 1):
        if n % divisor == 0:
            return False
    return True
''',
        """def check(candidate):
    assert candidate(13) is True
    assert candidate(1) is False
    assert candidate(9) is False
    assert candidate(2) is True
    assert candidate(97) is True
""",
    ),
    (
        '''def transpose(matrix):
    """Transpose a rectangular matrix given as a list of rows.
    >>> transpose([[1, 2, 3], [4, 5, 6]])
    [[1, 4], [2, 5], [3, 6]]
    """
    if not matrix:
        return []
    columns = len(matrix[0])
    return [[row[c] for row in matrix] for c in range(columns)]
''',
        """def check(candidate):
    assert candidate([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]
    assert candidate([]) == []
    assert candidate([[7]]) == [[7]]
""",
    ),
    (
        '''def longest_word(sentence):
    """The longest word of sentence (the first one on ties); '' when there is none.
    >>> longest_word("a quick brown fox")
    'quick'
    """
    longest = ""
    for word in sentence.split():
        if len(word) > len(longest):
            longest = word
    return longest
''',
        """def check(candidate):
    assert candidate("a quick brown fox") == "quick"
    assert candidate("") == ""
    assert candidate("ab cd") == "ab"
""",
    ),
    (
        '''def group_by_length(words):
    """Map each word length to the list of words of that length, in order.
    >>> group_by_length(["hi", "yo", "hey"])
    {2: ['hi', 'yo'], 3: ['hey']}
    """
    groups = {}
    for word in words:
        groups.setdefault(len(word), []).append(word)
    return groups
''',
        """def check(candidate):
    assert candidate(["hi", "yo", "hey"]) == {2: ["hi", "yo"], 3: ["hey"]}
    assert candidate([]) == {}
""",
    ),
    (
        '''def binary_search(values, target):
    """Index of target in the sorted list values, or -1 when it is absent.
    >>> binary_search([1, 3, 5, 7], 5)
    2
    """
    low, high = 0, len(values) - 1
    while low <= high:
        middle = (low + high) // 2
        if values[middle] == target:
            return middle
        if values[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1
''',
        """def check(candidate):
    assert candidate([1, 3, 5, 7], 5) == 2
    assert candidate([1, 3, 5, 7], 4) == -1
    assert candidate([], 1) == -1
    assert candidate([2], 2) == 0
    assert candidate([1, 3, 5, 7, 9, 11], 11) == 5
""",
    ),
    (
        '''def rotate_left(items, k):
    """Rotate items left by k places (k may exceed the length).
    >>> rotate_left([1, 2, 3, 4], 1)
    [2, 3, 4, 1]
    """
    if not items:
        return []
    k = k % len(items)
    return items[k:] + items[:k]
''',
        """def check(candidate):
    assert candidate([1, 2, 3, 4], 1) == [2, 3, 4, 1]
    assert candidate([1, 2, 3], 5) == [3, 1, 2]
    assert candidate([], 2) == []
""",
    ),
    (
        '''def balanced(text):
    """True when every bracket in text ( [ { is closed in the right order.
    >>> balanced("f(a[1]) {}")
    True
    """
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack
''',
        """def check(candidate):
    assert candidate("f(a[1]) {}") is True
    assert candidate("(]") is False
    assert candidate("((") is False
    assert candidate("") is True
    assert candidate("}") is False
""",
    ),
    (
        '''def squares_of_evens(numbers):
    """Squares of the even numbers, in order.
    >>> squares_of_evens([1, 2, 3, 4])
    [4, 16]
    """
    return [n * n for n in numbers if n % 2 == 0]
''',
        """def check(candidate):
    assert candidate([1, 2, 3, 4]) == [4, 16]
    assert candidate([]) == []
    assert candidate([-2, 5]) == [4]
""",
    ),
    (
        '''def initials(full_name):
    """Upper-case initials of a name, each followed by a dot.
    >>> initials("ada king lovelace")
    'A.K.L.'
    """
    parts = full_name.split()
    return "".join(part[0].upper() + "." for part in parts)
''',
        """def check(candidate):
    assert candidate("ada king lovelace") == "A.K.L."
    assert candidate("") == ""
    assert candidate("Bo") == "B."
""",
    ),
    (
        '''def fibonacci(n):
    """The first n Fibonacci numbers, starting 0, 1.
    >>> fibonacci(6)
    [0, 1, 1, 2, 3, 5]
    """
    numbers = []
    a, b = 0, 1
    for _ in range(n):
        numbers.append(a)
        a, b = b, a + b
    return numbers
''',
        """def check(candidate):
    assert candidate(6) == [0, 1, 1, 2, 3, 5]
    assert candidate(0) == []
    assert candidate(1) == [0]
""",
    ),
    (
        '''def clip_values(values, low, high):
    """Each value limited to the range [low, high].
    >>> clip_values([-5, 3, 12], 0, 10)
    [0, 3, 10]
    """
    clipped = []
    for value in values:
        clipped.append(max(low, min(high, value)))
    return clipped
''',
        """def check(candidate):
    assert candidate([-5, 3, 12], 0, 10) == [0, 3, 10]
    assert candidate([], 0, 1) == []
""",
    ),
]


def tasks() -> list[dict[str, str]]:
    """One task per non-blank body line of every problem (the docstring stays in the prompt)."""
    rows = []
    for source, test in PROBLEMS:
        name = source.split("def ", 1)[1].split("(", 1)[0]
        lines = source.splitlines(keepends=True)
        docstring_end = max(i for i, line in enumerate(lines) if line.strip() == '"""')
        for cut in range(docstring_end + 1, len(lines)):
            if not lines[cut].strip():
                continue
            rows.append({
                "task_id": f"DgemmaSingleLine/{name}/{cut - docstring_end - 1}",
                "entry_point": name,
                "prompt": "".join(lines[:cut]),
                "suffix": "".join(lines[cut + 1 :]),
                "canonical_solution": lines[cut],
                "test": test,
            })  # fmt: skip
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_suffix(".jsonl")
    out.write_text("".join(json.dumps(row) + "\n" for row in tasks()), encoding="utf-8")
    print(f"wrote {len(tasks())} tasks to {out}")
