"""A CSV file read as it was written: UTF-8 (with or without the byte-order mark spreadsheets put first), its
separator found, and with a semicolon its decimal comma, as spreadsheets write CSV in much of Europe.

    header, rows, dialect = read_rows(Path("my.csv"))              # dialect: "separator ';', decimal ','"
    header, rows, dialect = read_rows(path, separator=";", decimal=",")   # --sep and --decimal

The separator is the one of SEPARATORS that splits the header into two cells or more and the most of the first
lines into as many. With a semicolon, a tab or a pipe, cells such as 12,5 are numbers with a
decimal comma when no cell of the file writes a decimal point; they are given back as 12.5. A file that still cannot
be read is refused with CsvError, in terms of the file: the line, and the cells it found there.
"""

import csv
import io
import re

SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
SNIFFED_LINES = 50  # lines the separator is chosen on
DECIMAL_COMMA = re.compile(r"[+-]?[0-9]+,[0-9]+")
DECIMAL_POINT = re.compile(r"[+-]?[0-9]*\.[0-9]+")


class CsvError(ValueError):
    """A file that cannot be read as a table; one line saying why, in terms of the file."""


def read_text(path):
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise CsvError(f"{path} is not UTF-8 text (byte {err.start} cannot be read)") from None
    except OSError as err:
        raise CsvError(f"cannot read {path}: {err.strerror}") from None


def split(text, separator, limit=None):
    """The non-empty records of the text as lists of stripped cells, and the line each ends on (a quoted cell may
    hold line breaks, and blank lines are skipped: the numbers a message gives are those of the file)."""
    lines = text.splitlines(keepends=True)[:limit] if limit else io.StringIO(text)
    reader = csv.reader(lines, delimiter=separator)
    rows, numbers = [], []
    try:
        for row in reader:
            if row:
                rows.append([cell.strip() for cell in row])
                numbers.append(reader.line_num)
    except csv.Error as err:
        raise CsvError(f"it cannot be read as CSV with the separator {separator!r}: {err}") from None
    return rows, numbers


def find_separator(path, text):
    """The separator that splits the header into two cells or more and most of the first lines into as many (the
    most cells, between equals); a line that differs is then named by read_rows."""
    scores = {}
    for separator in SEPARATORS:
        try:
            rows = split(text, separator, SNIFFED_LINES)[0]
        except CsvError:
            continue
        if rows and len(rows[0]) >= 2:
            scores[separator] = (sum(len(row) == len(rows[0]) for row in rows) / len(rows), len(rows[0]))
    if scores:
        return max(scores, key=scores.get)
    raise CsvError(f"{path} is not a table: no separator (comma, semicolon, tab, pipe) splits its header into two "
                   "cells or more: give --sep, or check that it has a header row")


def find_decimal(rows, separator):
    """"," when cells write numbers with a decimal comma (possible only when the separator is not a comma) and none
    with a decimal point; else "."."""
    if separator == ",":
        return "."
    cells = [cell for row in rows for cell in row]
    commas = any(DECIMAL_COMMA.fullmatch(cell) for cell in cells)
    return "," if commas and not any(DECIMAL_POINT.fullmatch(cell) for cell in cells) else "."


def read_rows(path, separator=None, decimal=None):
    """(header, data rows, what was read in words) of a CSV file; CsvError saying why it cannot be one."""
    text = read_text(path)
    if len([line for line in text.splitlines() if line.strip()]) < 2:
        raise CsvError(f"{path} is not a table: it needs a header row and data rows of at least two columns")
    separator = separator or find_separator(path, text)
    try:
        rows, numbers = split(text, separator)
    except CsvError as err:
        raise CsvError(f"{path}: {err}") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise CsvError(f"{path} is not a table: it needs a header row and data rows of at least two columns "
                         f"(separated by {SEPARATORS.get(separator, repr(separator))}s)")
    header = rows[0]
    for number, row in zip(numbers[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise CsvError(f"{path} is not a table: line {number} has {len(row)} cells, the header {len(header)} "
                             f"(separator {separator!r})")
    decimal = decimal or find_decimal(rows[1:], separator)
    if decimal == ",":
        rows = [[cell.replace(",", ".") if DECIMAL_COMMA.fullmatch(cell) else cell for cell in row] for row in rows]
    return header, rows[1:], f"separator {separator!r}, decimal {decimal!r}"
