"""The input tensors of an Open Inference Protocol request, read into the rows the model takes, every field checked
for its JSON type before it is used, every value by its input's rule (inputs.py).

    rows = read_inputs(schema, header, binary)    # an (N, inputs) array, or a RequestError naming the field

A model of numbers only takes one tensor of shape [N, n] (or [n]), the inputs in the metadata's order, FP32 or FP64
(INT and UINT types converted). A model with categories takes one tensor per input, named by it, of shape [N] or
[N, 1]: BYTES for a category, FP32 or FP64 for a number, as MLServer's pandas codec sends a table's columns. Data
is JSON (flat, or one list per row) or, with Triton's binary tensor extension, the bytes after the JSON header, each
tensor taking its binary_data_size of them in the order the inputs are listed.
"""

import json
import struct

import numpy as np

from tabserve import wsgi
from tabserve.inputs import MISSING, is_missing, json_kind
from tabserve.model import MAX_ROWS
from tabserve.wsgi import RequestError, shorten

INPUT_NAME = "input-0"  # the name the metadata gives the one tensor of a model of numbers only
# The little-endian NumPy type of each number datatype an input may have; every one is converted to float64.
DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
             "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
TENSOR_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
FP32_DIGITS = 7  # significant digits an FP32 value is read to (see shortest_decimals)
MAX_REPORTED = 5
MISSING_REQUIRED = "is missing (null, NaN or an empty string), but the model needs it"


def bad(field, message):
    return wsgi.invalid([wsgi.field_error(field, message)])


def json_integer(value):
    """The value as an int if JSON counts it an integer (4.0 is one, as in JSON Schema; true is not), else None."""
    if type(value) is int:
        return value
    return int(value) if type(value) is float and value.is_integer() else None


def expect(field, value, kind):
    """The value, if its JSON type is kind (str, list, dict, int or bool: true is no integer here); else a 400 naming
    the field. Every field is checked so before it is used, so no JSON value can reach code that assumes another."""
    if kind is int and json_integer(value) is not None:
        return json_integer(value)
    if type(value) is not kind:
        wanted = {str: "a string", list: "an array", dict: "an object", int: "an integer", bool: "true or false"}[kind]
        raise bad(field, f"must be {wanted}, got {json_kind(value)}")
    return value


def check_parameters(field, parameters, flag=None):
    """Parameters as the protocol has them: strings, numbers or booleans; `flag`, if there, a boolean."""
    expect(field, parameters, dict)
    wrong = next((key for key, value in parameters.items() if not isinstance(value, (str, int, float))), None)
    if wrong is not None:
        raise bad(f"{field}.{shorten(wrong)}", f"must be a string, a number or a boolean, got "
                                               f"{json_kind(parameters[wrong])}")
    if flag in parameters:
        expect(f"{field}.{flag}", parameters[flag], bool)
    return parameters


class Body:
    """The binary part of a request, handed out to the tensors in order."""

    def __init__(self, binary):
        self.binary, self.offset = binary, 0

    def take(self, size):
        if self.offset + size > len(self.binary):
            raise bad("body", f"has {len(self.binary)} bytes after the JSON header; binary_data_size says "
                              f"{self.offset + size} or more")
        self.offset += size
        return self.binary[self.offset - size:self.offset]

    def check_used(self):
        if self.offset == 0 and self.binary:
            raise bad("body", f"has {len(self.binary)} bytes after the JSON header but no input names a "
                              "binary_data_size")
        if self.offset != len(self.binary):
            raise bad("body", f"has {len(self.binary)} bytes after the JSON header; binary_data_size says "
                              f"{self.offset}")


def tensor_fields(where, tensor, datatypes):
    """(name, datatype, parameters) of a tensor, each checked for its type; datatypes are those it may have."""
    expect(where, tensor, dict)
    unknown = sorted(set(tensor) - TENSOR_FIELDS)
    if unknown:
        raise bad(f"{where}.{shorten(unknown[0])}", f"is not a field of a tensor; they are "
                                                    f"{', '.join(sorted(TENSOR_FIELDS))}")
    name = expect(f"{where}.name", tensor.get("name"), str)
    datatype = expect(f"{where}.datatype", tensor.get("datatype"), str)
    if datatype not in datatypes:
        raise bad(f"{where}.datatype", f"must be one of {', '.join(datatypes)}, got {shorten(json.dumps(datatype))}")
    return name, datatype, check_parameters(f"{where}.parameters", tensor.get("parameters", {}))


def tensor_rows(where, shape, columns, names):
    """N, from a shape of [N, columns] or [columns] (columns 1: [N] or [N, 1]); a 413 past MAX_ROWS, before any
    data is read."""
    dims = [json_integer(dim) for dim in expect(f"{where}.shape", shape, list)]
    if columns == 1:
        valid = len(dims) in (1, 2) and dims[0] is not None and dims[0] >= 1 and dims[1:] in ([], [1])
        rows, form = (dims[0] if valid else None), "[N] or [N, 1]"
    else:
        valid = dims == [columns] or (len(dims) == 2 and dims[1] == columns and dims[0] is not None and dims[0] >= 1)
        rows, form = (1 if len(dims) == 1 else dims[0]) if valid else None, f"[N, {columns}] or [{columns}]"
    if not valid:
        raise bad(f"{where}.shape", f"must be {form} ({', '.join(names)}), got {shorten(json.dumps(shape))}")
    if rows > MAX_ROWS:
        raise RequestError(413, f"{where} has {rows} rows; a request holds at most {MAX_ROWS}: split it")
    return rows


def json_data(where, tensor, rows, columns, what="values"):
    """The tensor's JSON data, flat or one list per row, as a flat list."""
    field = f"{where}.data"
    data = expect(field, tensor.get("data"), list)
    if data and all(type(row) is list for row in data):
        if len(data) != rows or any(len(row) != columns for row in data):
            raise bad(field, f"must hold {rows} lists of {columns} {what}, as its shape says")
        data = [value for row in data for value in row]
    if len(data) != rows * columns:
        raise bad(field, f"has {len(data)} values; its shape says {rows * columns}")
    return data


def numbers(where, data, datatype, nullable=lambda index: False):
    """JSON numbers as a float64 array, null as NaN where nullable(index) says a value may be missing, refusing any
    other value (and a fraction for an INT or UINT datatype)."""
    integers = datatype.startswith(("INT", "UINT"))
    wrong = next((i for i, value in enumerate(data) if not (value is None and nullable(i)) and (
        type(value) not in (int, float) or (integers and type(value) is float and not value.is_integer()))), None)
    if wrong is not None:
        kind = "an integer" if integers else "a number"  # 7.0 is an integer, as JSON Schema says
        raise bad(f"{where}.data[{wrong}]", f"must be {kind} for {datatype}, got {shorten(json.dumps(data[wrong]))}")
    try:
        return np.array([np.nan if value is None else value for value in data], dtype=np.float64)
    except OverflowError:
        raise bad(f"{where}.data", "holds an integer too large for a float") from None


def raw_data(where, tensor, parameters, body, expected, why=""):
    """The tensor's bytes from the binary part of the body, when its parameters name a binary_data_size; else None.
    expected is the size its shape and datatype call for (why: how), or None where it cannot be known (BYTES)."""
    if "binary_data_size" not in parameters:
        return None
    size = expect(f"{where}.parameters.binary_data_size", parameters["binary_data_size"], int)
    if "data" in tensor:
        raise bad(f"{where}.data", "must be absent when the tensor's bytes follow the JSON (binary_data_size)")
    if size < 0 or (expected is not None and size != expected):
        raise bad(f"{where}.parameters.binary_data_size", f"must be {expected}{why}, got {size}")
    return body.take(size)


def bytes_elements(where, raw, count):
    """The strings of a BYTES tensor in the binary extension: each a 4-byte little-endian length, then UTF-8."""
    values, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise bad(f"{where}.parameters.binary_data_size", f"holds fewer than the {count} elements of its shape")
        (length,), offset = struct.unpack_from("<I", raw, offset), offset + 4
        try:
            values.append(raw[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise bad(f"{where}.data", "holds an element that is not UTF-8") from None
        offset += length
    if offset != len(raw):
        raise bad(f"{where}.parameters.binary_data_size", f"holds more than the {count} elements of its shape")
    return values


def shortest_decimals(values):
    """FP32 values read as the decimals they stand for: a float32 carries about 7 significant digits, so 7.9 arrives
    as 7.900000095 and would lie beyond a training range that ends at 7.9. Rounded to FP32_DIGITS significant
    digits, it is 7.9 again."""
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.floor(np.log10(np.abs(values), where=finite, out=np.zeros_like(values)))
    scale = 10.0 ** (FP32_DIGITS - 1 - magnitude)
    return np.where(finite, np.round(values * scale) / scale, values)


def as_fp32(values):
    """What an FP32 tensor holds for these values, JSON's or the binary data's: each the nearest float32 (5e-324
    becomes 0, 1e39 inf, as they would in the client's own FP32 array), read as the decimal it stands for."""
    with np.errstate(over="ignore"):
        return shortest_decimals(values.astype(np.float32).astype(np.float64))


def matrix_tensor(schema, header, body):
    """The one tensor of a model of numbers only, as an (N, n) float64 array (not yet checked by the rules), and
    whether it was FP32."""
    inputs = header["inputs"]
    if len(inputs) != 1:
        raise bad("inputs", f"must hold exactly one tensor, '{INPUT_NAME}' of shape [N, {len(schema.inputs)}]")
    where, columns = "inputs[0]", len(schema.inputs)
    _, datatype, parameters = tensor_fields(where, inputs[0], DATATYPES)
    rows = tensor_rows(where, inputs[0].get("shape"), columns, schema.names)
    itemsize = np.dtype(DATATYPES[datatype]).itemsize
    raw = raw_data(where, inputs[0], parameters, body, rows * columns * itemsize,
                   f" ({rows} x {columns} x {itemsize} bytes)")
    if raw is None:
        optional = [item.optional for item in schema.inputs]
        values = numbers(where, json_data(where, inputs[0], rows, columns, "numbers"), datatype,
                         lambda index: optional[index % columns])
    else:
        values = np.frombuffer(raw, dtype=DATATYPES[datatype]).astype(np.float64)
    values = values.reshape(rows, columns)
    return (as_fp32(values), True) if datatype == "FP32" else (values, False)


def feature_column(item, where, tensor, body, rows):
    """One input's tensor of a model with categories, as a list of N values (numbers not yet checked), and whether
    it was FP32."""
    datatypes = {"FP32": "<f4", "FP64": "<f8"} if item.kind == "number" else {"BYTES": None}
    _, datatype, parameters = tensor_fields(where, tensor, datatypes)
    count = tensor_rows(where, tensor.get("shape"), 1, [item.name])
    if rows is not None and count != rows:
        raise bad(f"{where}.shape", f"says {count} rows; the other inputs have {rows}")
    size = None if datatype == "BYTES" else count * np.dtype(datatypes[datatype]).itemsize
    raw = raw_data(where, tensor, parameters, body, size)
    if datatype == "BYTES":  # an empty string (or JSON's null) is a missing value
        values = json_data(where, tensor, count, 1) if raw is None else bytes_elements(where, raw, count)
        return [MISSING if value in ("", None) else value for value in values], False
    if raw is None:
        values = numbers(where, json_data(where, tensor, count, 1), datatype, lambda index: item.optional)
    else:
        values = np.frombuffer(raw, dtype=datatypes[datatype]).astype(np.float64)
    return (as_fp32(values) if datatype == "FP32" else values).tolist(), datatype == "FP32"


def feature_tensors(schema, header, body):
    """One tensor per input of a model with categories, as an (N, inputs) object array (not yet checked), and the
    names of the inputs sent as FP32."""
    inputs, columns, rows, fp32 = header["inputs"], {}, None, set()
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        name = expect(f"{where}.name", expect(where, tensor, dict).get("name"), str)
        if name not in schema.by_name or name in columns:
            raise bad(f"{where}.name", f"must be one of {', '.join(schema.names)}, each once; got {shorten(name)!r}")
        columns[name], was_fp32 = feature_column(schema.by_name[name], where, tensor, body, rows)
        rows = len(columns[name])
        if was_fp32:
            fp32.add(name)
    missing = [name for name in schema.names if name not in columns]
    if missing:
        raise bad("inputs", f"must hold one tensor per input ({', '.join(schema.names)}); missing {', '.join(missing)}")
    matrix = np.empty((rows, len(schema.inputs)), dtype=object)
    for index, name in enumerate(schema.names):
        matrix[:, index] = columns[name]
    return matrix, fp32


def check_values(schema, matrix, where_of, fp32=()):
    """The matrix, if every value follows its input's rule; else a 400 naming the first few that do not, each as
    the API read it (a value sent as FP32: as FP32 holds it, which says why 5e-324 reads as 0)."""
    problems = []
    numbers = schema.numbers_of(matrix)
    for row, column in np.argwhere(schema.invalid(numbers))[:MAX_REPORTED].tolist():
        item, value = schema.inputs[schema.number_columns[column]], numbers[row, column]
        read = f"{value:g}{' as FP32' if item.name in fp32 else ''}"
        message = MISSING_REQUIRED if np.isnan(value) else f"{item.rule()}, got {read}"
        problems.append((row, schema.number_columns[column], message))
    for column, item in enumerate(schema.inputs):
        if item.kind != "number":
            problems += text_problems(item, column, matrix)
    if not problems:
        return matrix
    errors = [{"field": where_of(row, column), "message": message} for row, column, message in problems[:MAX_REPORTED]]
    raise RequestError(400, f"{len(problems)} values break their input's rule", errors)


def text_problems(item, column, matrix):
    """[(row, column, message)] of a category's or a date's column that break its rule (at most MAX_REPORTED); the
    others are put in the form the model takes (a date's canonical text), in place."""
    problems = []
    for row, value in enumerate(matrix[:, column].tolist()):
        if is_missing(value):
            if not item.optional:
                problems.append((row, column, MISSING_REQUIRED))
            continue
        try:
            if not isinstance(value, str):
                raise ValueError(f"{item.rule()}, got {shorten(json.dumps(value))}")
            matrix[row, column] = item.parse_string(value, lambda text: shorten(json.dumps(text)))
        except ValueError as err:
            problems.append((row, column, str(err)))
        if len(problems) >= MAX_REPORTED:
            break
    return problems


def read_inputs(schema, header, binary):
    """The request's input tensors as an (N, inputs) array of values that follow their rules."""
    if "inputs" not in header:
        wanted = (f"one tensor, '{INPUT_NAME}' of shape [N, {len(schema.inputs)}]" if schema.numeric
                  else f"one tensor per input ({', '.join(schema.names)})")
        raise bad("inputs", f"is required: {wanted}")
    expect("inputs", header["inputs"], list)
    body = Body(binary)
    if schema.numeric:
        matrix, was_fp32 = matrix_tensor(schema, header, body)
        fp32 = set(schema.names) if was_fp32 else set()

        def where_of(row, column):
            return f"inputs[0][{row}][{column}] ({schema.names[column]})"
    else:
        matrix, fp32 = feature_tensors(schema, header, body)
        order = [tensor["name"] for tensor in header["inputs"]]

        def where_of(row, column):
            return f"inputs[{order.index(schema.names[column])}].data[{row}]"
    body.check_used()
    return check_values(schema, matrix, where_of, fp32)
