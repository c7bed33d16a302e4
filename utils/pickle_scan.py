"""Pickles from elsewhere, checked before anything is built (docs/data.md#untrusted-files).

A checkpoint's ``data.pkl`` and the original's pickled label file are walked opcode by opcode
first; anything outside the budget raises :class:`utils.errors.Refused`, whose message says why
(the caller names the file and turns it into a one-line :class:`utils.errors.UserError`).

- :func:`check_pickle_memo`: every opcode known, every memo index bounded (a fast pass before
  the C unpickler, whose memo grows to the largest index).
- :func:`scan_pickle`: only listed globals, a bounded memo, numeric numpy arrays of bounded
  declared size (no object arrays but the 0-d wrapper of a pickled dict), tensors inside their
  storage, a bounded sum of declared bytes.
- :func:`scan_labels`: :func:`scan_pickle` with the rules of the original's labels file, whose
  arrays are label vectors (checkpoints and labels files go through the same walk).
- :func:`check_tree`: the loaded object has bounded depth, node count and bytes, where a shared
  sub-object counts each time it is reached (a small DAG that expands exponentially, or one array
  under 40 keys that later code would copy 40 times, is refused).
"""
import math
import pickletools
from typing import Dict, Iterable, Optional

import numpy as np

from utils.errors import Refused

class _Global:
    def __init__(self, name: str):
        self.name = name


class _Container:
    __slots__ = ("kind",)

    def __init__(self, kind: str):
        self.kind = kind


class _Array:
    """An array or tensor of ``nbytes`` declared bytes (counted again at each re-use)."""
    __slots__ = ("kind", "nbytes", "built")

    def __init__(self, kind: str, nbytes: int = 0):
        self.kind, self.nbytes, self.built = kind, nbytes, False


class _DType:
    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _Storage:
    __slots__ = ("numel", "itemsize")

    def __init__(self, numel: int, itemsize: int):
        self.numel, self.itemsize = numel, itemsize


class _Other:
    """A value built by an allowed call (a scalar tuple, bytes) that needs no further check."""


NUMPY_RECONSTRUCT = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
TORCH_STORAGE_ITEMSIZE = {
    "torch.DoubleStorage": 8, "torch.FloatStorage": 4, "torch.HalfStorage": 2,
    "torch.BFloat16Storage": 2, "torch.LongStorage": 8, "torch.IntStorage": 4,
    "torch.ShortStorage": 2, "torch.CharStorage": 1, "torch.ByteStorage": 1,
    "torch.BoolStorage": 1, "torch.UntypedStorage": 1,
}
CHECKPOINT_GLOBALS = frozenset({
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "collections.OrderedDict", "_codecs.encode", "torch.Size",
    *TORCH_STORAGE_ITEMSIZE, *NUMPY_RECONSTRUCT, "numpy.ndarray", "numpy.dtype",
})
LABEL_GLOBALS = frozenset({*NUMPY_RECONSTRUCT, "numpy.ndarray", "numpy.dtype"})


_PUSH_ARG = frozenset({
    "BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING",
    "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BYTEARRAY8"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Refused(f"{what} is not an integer")
    return v


def _shape(v, what: str):
    if not isinstance(v, tuple) or len(v) > 8:
        raise Refused(f"{what} is not a short tuple of sizes")
    dims = [_int(d, what) for d in v]
    if any(d < 0 for d in dims):
        raise Refused(f"{what} has a negative size")
    return dims


def _simple_dtype(spec, allow_object: bool):
    if not isinstance(spec, str) or len(spec) > 8:
        raise Refused("a numpy dtype that is not a short type code")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise Refused(f"numpy dtype {spec!r} is not a type code") from None
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufcUSO" or \
            (dtype.kind == "O" and not allow_object):
        raise Refused(f"numpy dtype {spec!r} (objects, records and sub-arrays are not data)")
    return dtype


_FLAGS = {"LONG_BINPUT": 1, "PUT": 2, "MEMOIZE": 3, "STOP": 4}

# What loading a pickle may hold in memory, per opcode (bytes, CPython on 64 bits, rounded up): the
# object an opcode makes, or the slot it adds to a container or the memo. An opcode with an
# argument of variable length (a string, bytes, a long) makes an object of 56 + that length. A
# legitimate file builds 2-9 times its size (a checkpoint's structure, the original's labels);
# a file of 1-byte opcodes that each make a set or a list builds 50-200 times its size.
BUILT_BYTES = {
    "EMPTY_LIST": 56, "EMPTY_DICT": 64, "EMPTY_SET": 216, "FROZENSET": 216, "LIST": 56, "DICT": 64,
    "TUPLE": 48, "TUPLE1": 48, "TUPLE2": 56, "TUPLE3": 64, "APPEND": 8, "APPENDS": 8, "SETITEM": 16,
    "SETITEMS": 16, "ADDITEMS": 16, "REDUCE": 112, "NEWOBJ": 112, "NEWOBJ_EX": 112, "BUILD": 16,
    "GLOBAL": 64, "STACK_GLOBAL": 64, "INST": 112, "OBJ": 112, "BININT": 32, "BININT1": 32,
    "BININT2": 32, "BINFLOAT": 24, "PUT": 8, "BINPUT": 8, "LONG_BINPUT": 8, "MEMOIZE": 8,
    "GET": 8, "BINGET": 8, "LONG_BINGET": 8, "DUP": 8,
}
VARIABLE_BYTES = 56          # an object whose argument is a string, bytes or a long, plus its length
MAX_BUILT_RATIO = 16         # what a pickle may build, as a multiple of its size ...
BUILT_SLACK = 16 << 20       # ... plus this


def built_budget(data: bytes) -> int:
    """The bytes of objects that loading the pickle ``data`` may build (see :data:`BUILT_BYTES`)."""
    return MAX_BUILT_RATIO * len(data) + BUILT_SLACK


def _too_much_built(budget: int) -> Refused:
    return Refused(f"a pickle that builds more than {budget >> 20} MiB of objects ({MAX_BUILT_RATIO} "
                   "times its size: many small containers or strings, not data)")


def _opcode_table():
    """Per opcode byte: (argument kind, flag, built bytes): kind >= 0 a fixed length, -1 one text
    line, -6 two lines, -2..-5 a length prefix of 1, 4 (signed), 4 or 8 bytes; flag marks memo ops
    and STOP; built bytes as :data:`BUILT_BYTES` (variable-length arguments add their length)."""
    table = [None] * 256
    for op in pickletools.opcodes:
        kind = 0 if op.arg is None else (-6 if op.arg.name == "stringnl_noescape_pair" else op.arg.n)
        cost = BUILT_BYTES.get(op.name, VARIABLE_BYTES if kind < 0 else 0)
        table[op.code.encode("latin-1")[0]] = (kind, _FLAGS.get(op.name, 0), cost)
    return table


_OPCODES = _opcode_table()
_LENGTH_BYTES = {-2: 1, -3: 4, -4: 4, -5: 8}


def check_pickle_memo(data: bytes, max_memo: int = 1 << 22) -> None:
    """Check every opcode of the pickle ``data`` is known, every memo index is at most
    ``max_memo`` and what loading it may build stays within :func:`built_budget`, without
    building anything (a fast pass before the C unpickler, whose memo grows to the largest index:
    one 5-byte opcode could otherwise take gigabytes, as could millions of 1-byte empty sets)."""
    i, n, memo, built, budget = 0, len(data), 0, 0, built_budget(data)
    table, lengths, from_bytes = _OPCODES, _LENGTH_BYTES, int.from_bytes
    while i < n:
        entry = table[data[i]]
        if entry is None:
            raise Refused(f"an unknown pickle opcode {data[i]} at byte {i}")
        kind, flag, cost = entry
        built += cost
        if built > budget:
            raise _too_much_built(budget)
        i += 1
        if kind > 0:
            if flag == 1 and from_bytes(data[i:i + 4], "little") > max_memo:
                raise Refused(f"a memo index of {from_bytes(data[i:i + 4], 'little')}, more than "
                              f"{max_memo}")
            i += kind
        elif kind == 0:
            if flag == 3:
                memo += 1
                if memo > max_memo:
                    raise Refused(f"more than {max_memo} memo entries")
            elif flag == 4:
                return
        elif kind == -1 or kind == -6:
            end = data.find(b"\n", i)
            if kind == -6 and end >= 0:
                end = data.find(b"\n", end + 1)
            if end < 0:
                raise Refused("a malformed pickle (unterminated text)")
            if flag == 2 and int(data[i:end] or b"0") > max_memo:
                raise Refused(f"a memo index of {int(data[i:end])}, more than {max_memo}")
            i = end + 1
        else:
            width = lengths[kind]
            length = from_bytes(data[i:i + width], "little", signed=kind == -3)
            if length < 0:
                raise Refused("a malformed pickle (negative length)")
            built += length
            i += width + length
    raise Refused("a malformed pickle (no STOP)")


def scan_pickle(data: bytes, allowed: Iterable[str], max_bytes: int, max_memo: int = 1 << 20,
                storages: Optional[Dict[str, int]] = None, allow_object_scalar: bool = False) -> None:
    """Check the pickle ``data`` without building it; raise :class:`Refused` when it uses a global
    outside ``allowed``, an opcode that calls or imports other code, a memo index above
    ``max_memo``, a numpy array that is not numeric (``allow_object_scalar``: a 0-d object
    array, the wrapper of the original's pickled dict) or a tensor/storage that does not fit, or
    when the arrays and tensors it builds declare more than ``max_bytes`` (re-uses are counted by
    :func:`check_tree` on the loaded object). ``storages``: record key -> bytes of a checkpoint's storage records."""
    _PickleScan(frozenset(allowed), max_bytes, max_memo, storages, allow_object_scalar).run(data)


def scan_labels(data: bytes, max_bytes: int, max_memo: int, max_array_bytes: int, max_dim: int) -> None:
    """Check the pickle of the original's labels file (``np.save`` of a dict id -> label vector:
    a dict inside a 0-d object array) as :func:`scan_pickle` does with :data:`LABEL_GLOBALS` and
    that 0-d object array, and raise :class:`Refused` for any array that is no label vector: one
    of more than ``max_array_bytes`` bytes, more than 2 dimensions or a size above ``max_dim``,
    complex numbers, a rebuild from more than an empty array, or a dtype whose pickled state
    changes the flags or size numpy gives its type (numpy applies them: flags can make numbers
    read as object pointers)."""
    _LabelScan(max_bytes, max_memo, max_array_bytes, max_dim).run(data)


class _PickleScan:
    """The pickle machine of :func:`scan_pickle`: its stack, marks and memo hold placeholders
    (:class:`_Global`, :class:`_Array`, ...) instead of objects. Each group of opcodes has one
    method (:data:`_PickleScan.HANDLERS`); an opcode of no group is refused."""

    GLOBAL_REFUSED = "Python objects other than data ({})"   # the refusal of a global not allowed

    def __init__(self, allowed: frozenset, max_bytes: int, max_memo: int,
                 storages: Optional[Dict[str, int]], allow_object_scalar: bool):
        self.allowed, self.max_bytes, self.max_memo = allowed, max_bytes, max_memo
        self.storages, self.allow_object_scalar = storages, allow_object_scalar
        self.stack: list = []
        self.marks: list = []
        self.memo: dict = {}
        self.total = 0

    def run(self, data: bytes) -> None:
        built, budget = 0, built_budget(data)
        try:
            for op, arg, _pos in pickletools.genops(data):
                name = op.name
                if name == "STOP":
                    break
                built += BUILT_BYTES.get(name, 0) if not isinstance(arg, (str, bytes, bytearray)) \
                    else VARIABLE_BYTES + len(arg)
                if built > budget:
                    raise _too_much_built(budget)
                handler = self.HANDLERS.get(name)
                if handler is None:
                    raise Refused(f"pickle opcode {name} (it imports or calls code)")
                handler(self, name, arg)
            else:
                raise Refused("a malformed pickle (no STOP)")
        except Refused:
            raise
        except (ValueError, IndexError, KeyError, TypeError, EOFError, OverflowError,
                UnicodeDecodeError, RecursionError) as exc:
            raise Refused(f"a malformed pickle ({type(exc).__name__})") from None
        if len(self.stack) != 1:
            raise Refused("a malformed pickle (stack left over)")

    # -------------------------------------------------------------- the stack and the byte budget
    def count(self, v) -> None:
        if isinstance(v, _Array):
            self.total += v.nbytes
            if self.total > self.max_bytes:
                raise Refused(f"arrays and tensors declaring more than {self.max_bytes} bytes")

    def pop(self):
        if not self.stack:
            raise Refused("a malformed pickle (empty stack)")
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.marks:
            raise Refused("a malformed pickle (no mark)")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # -------------------------------------------------------------- values, memo and containers
    def push_arg(self, name: str, arg) -> None:
        self.stack.append(arg)

    def push_constant(self, name: str, arg) -> None:
        self.stack.append(_CONSTANTS[name])

    def skip(self, name: str, arg) -> None:
        pass

    def memo_put(self, name: str, arg) -> None:
        index = len(self.memo) if name == "MEMOIZE" else arg
        if not isinstance(index, int) or not 0 <= index <= self.max_memo:
            raise Refused(f"a memo index of {index}, more than {self.max_memo}")
        if not self.stack:
            raise Refused("a malformed pickle (empty stack)")
        self.memo[index] = self.stack[-1]

    def memo_get(self, name: str, arg) -> None:
        if arg not in self.memo:
            raise Refused("a malformed pickle (unknown memo entry)")
        self.stack.append(self.memo[arg])

    def tuple_n(self, name: str, arg) -> None:
        n = _TUPLE_N[name]
        if len(self.stack) < n:
            raise Refused("a malformed pickle (short stack)")
        items = tuple(self.stack[len(self.stack) - n:])
        del self.stack[len(self.stack) - n:]
        self.stack.append(items)

    def empty_container(self, name: str, arg) -> None:
        self.stack.append(_Container(name[6:].lower()))

    def mark(self, name: str, arg) -> None:
        self.marks.append(len(self.stack))

    def tuple_from_mark(self, name: str, arg) -> None:
        self.stack.append(tuple(self.pop_mark()))

    def container_from_mark(self, name: str, arg) -> None:
        self.pop_mark()
        self.stack.append(_Container(name.lower()))

    def add_item(self, name: str, arg) -> None:
        self.pop()
        if name == "SETITEM":
            self.pop()
        self._check_container()

    def add_items(self, name: str, arg) -> None:
        self.pop_mark()
        self._check_container()

    def _check_container(self) -> None:
        if not self.stack or not isinstance(self.stack[-1], _Container):
            raise Refused("items added to something that is not a list or dict")

    def pop_op(self, name: str, arg) -> None:
        self.pop()

    def pop_mark_op(self, name: str, arg) -> None:
        self.pop_mark()

    def dup(self, name: str, arg) -> None:
        self.stack.append(self.stack[-1] if self.stack else self.pop())

    # -------------------------------------------------------------- globals, calls and state
    def global_op(self, name: str, arg) -> None:
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
        else:
            attr, module = self.pop(), self.pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                raise Refused("a malformed pickle (global without names)")
        full = f"{module}.{attr}"
        if full not in self.allowed:
            raise Refused(self.GLOBAL_REFUSED.format(full[:100]))
        self.stack.append(_Global(full))

    def reduce(self, name: str, arg) -> None:
        args = self.pop()
        self.stack.append(self.call(self.pop(), args))

    def newobj(self, name: str, arg) -> None:
        args, cls = self.pop(), self.pop()
        self.stack.append(self.call(cls, args))

    def build_op(self, name: str, arg) -> None:
        state = self.pop()
        if not self.stack:
            raise Refused("a malformed pickle (empty stack)")
        self.build(self.stack[-1], state)

    def persistent_id(self, name: str, arg) -> None:
        pid = self.pop() if name == "BINPERSID" else arg
        storages = self.storages
        if storages is None or not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise Refused("a reference to data outside the pickle")
        kind, key, _loc, numel = pid[1:]
        if not isinstance(kind, _Global) or kind.name not in TORCH_STORAGE_ITEMSIZE:
            raise Refused("a storage of an unknown type")
        itemsize = TORCH_STORAGE_ITEMSIZE[kind.name]
        numel = _int(numel, "a storage's size")
        if not isinstance(key, str) or key not in storages:
            raise Refused(f"a storage record {str(key)[:40]!r} that the file does not hold")
        if numel < 0 or numel * itemsize > storages[key]:
            raise Refused(f"a storage declaring {numel * itemsize} bytes in a record of "
                          f"{storages[key]}")
        self.stack.append(_Storage(numel, itemsize))

    def call(self, func, args):
        """The placeholder that calling the allowed global ``func`` with ``args`` gives."""
        if not isinstance(func, _Global):
            raise Refused("a call of something that is not an allowed global")
        name = func.name
        if not isinstance(args, tuple):
            raise Refused(f"a call of {name} without an argument tuple")
        if name in NUMPY_RECONSTRUCT:
            return _reconstruct_array(name, args)
        if name == "numpy.dtype":
            if not 1 <= len(args) <= 3:
                raise Refused("numpy.dtype called with odd arguments")
            return _DType(_simple_dtype(args[0], self.allow_object_scalar))
        if name == "torch._utils._rebuild_tensor_v2":
            tensor = _rebuild_tensor(args)
            self.count(tensor)
            return tensor
        if name == "torch._utils._rebuild_parameter":
            if not args or not isinstance(args[0], _Array):
                raise Refused("a parameter without a tensor")
            return args[0]
        if name == "collections.OrderedDict":
            if args:
                raise Refused("OrderedDict called with arguments")
            return _Container("dict")
        if name == "_codecs.encode":
            if len(args) != 2 or not all(isinstance(a, str) for a in args):
                raise Refused("_codecs.encode with odd arguments")
            return _Other()
        if name == "torch.Size":
            return _Other()
        raise Refused(f"a call of {name}")

    def build(self, inst, state) -> None:
        """Check the state that BUILD sets on ``inst``: a numpy array's shape, dtype and data, a
        dtype's, an OrderedDict's or a tensor's."""
        if isinstance(inst, _Array) and inst.kind == "ndarray":
            _build_array(inst, state)
            self.count(inst)
            return
        if isinstance(inst, _DType):
            if not isinstance(state, tuple) or len(state) < 8 or any(s is not None for s in state[2:5]):
                raise Refused("a numpy dtype with fields or sub-arrays")
            return
        if isinstance(inst, _Container) and inst.kind == "dict":   # OrderedDict's attributes
            if not isinstance(state, (_Container, dict)) and state is not None:
                raise Refused("an OrderedDict with an odd state")
            return
        if isinstance(inst, _Array) and inst.kind == "tensor":
            return   # torch sets the parameter's or tensor's attributes (hooks)
        raise Refused("state set on an object that is not an array, dtype or dict")

    HANDLERS = {
        **dict.fromkeys(_PUSH_ARG, push_arg),
        **dict.fromkeys(_MEMO_PUT, memo_put),
        **dict.fromkeys(_MEMO_GET, memo_get),
        **dict.fromkeys(_TUPLE_N, tuple_n),
        **dict.fromkeys(_CONSTANTS, push_constant),
        "PROTO": skip, "FRAME": skip,
        **dict.fromkeys(("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"), empty_container),
        "MARK": mark,
        "TUPLE": tuple_from_mark,
        **dict.fromkeys(("LIST", "DICT", "FROZENSET"), container_from_mark),
        **dict.fromkeys(("APPEND", "SETITEM"), add_item),
        **dict.fromkeys(("APPENDS", "SETITEMS", "ADDITEMS"), add_items),
        "POP": pop_op, "POP_MARK": pop_mark_op, "DUP": dup,
        **dict.fromkeys(("GLOBAL", "STACK_GLOBAL"), global_op),
        "REDUCE": reduce, "NEWOBJ": newobj, "BUILD": build_op,
        **dict.fromkeys(("PERSID", "BINPERSID"), persistent_id),
    }


class _LabelScan(_PickleScan):
    """The machine of :func:`scan_labels`: :class:`_PickleScan` with the label globals, whose
    numpy calls and states are checked further once its own checks have passed."""

    GLOBAL_REFUSED = "{} is not allowed in a labels file"

    def __init__(self, max_bytes: int, max_memo: int, max_array_bytes: int, max_dim: int):
        super().__init__(LABEL_GLOBALS, max_bytes, max_memo, None, True)
        self.max_array_bytes, self.max_dim = max_array_bytes, max_dim

    def call(self, func, args):
        made = super().call(func, args)     # func is an allowed global, args a tuple of its form
        if func.name == "numpy.dtype" and made.dtype.kind == "c":
            raise Refused(f"numpy dtype {args[0]!r} (a label vector holds real numbers)")
        if func.name in NUMPY_RECONSTRUCT and (len(args[1]) > 2 or any(d > 1 for d in args[1])):
            raise Refused(f"{func.name} used for something other than an empty array")
        return made

    def build(self, inst, state) -> None:
        super().build(inst, state)          # the state has the form of an array's or a dtype's
        if isinstance(inst, _DType):
            dtype = inst.dtype
            if state[7] != dtype.flags or (dtype.kind in "SU" and state[5] != dtype.itemsize):
                raise Refused(f"a numpy dtype {dtype} whose state changes its flags or size")
        elif isinstance(inst, _Array):
            shape, dtype = tuple(state[1]), state[2].dtype
            if len(shape) > 2 or any(d > self.max_dim for d in shape):
                raise Refused(f"an array of shape {shape}, not a label vector")
            if inst.nbytes > self.max_array_bytes:
                raise Refused(f"an array of {shape} x {dtype}, more than a label vector")


def _reconstruct_array(name: str, args: tuple) -> _Array:
    """numpy's ``_reconstruct(ndarray, shape, dtype)``: an empty array whose data BUILD sets."""
    if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].name == "numpy.ndarray"):
        raise Refused(f"{name} used for something other than a numpy array")
    dims = _shape(args[1], "an array's initial shape")
    if math.prod(dims) > 1:
        raise Refused(f"{name} allocating {math.prod(dims)} elements before its data")
    return _Array("ndarray")


def _rebuild_tensor(args: tuple) -> _Array:
    """torch's ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``: a view inside its storage."""
    if len(args) < 4 or not isinstance(args[0], _Storage):
        raise Refused("a tensor without its storage")
    storage = args[0]
    offset = _int(args[1], "a tensor's offset")
    size, stride = _shape(args[2], "a tensor's size"), _shape(args[3], "a tensor's stride")
    if len(size) != len(stride):
        raise Refused("a tensor whose size and stride differ in length")
    numel = math.prod(size)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if numel else offset
    if offset < 0 or (numel and last >= storage.numel):
        raise Refused("a tensor that reaches past its storage")
    return _Array("tensor", numel * storage.itemsize)


def _build_array(inst: _Array, state) -> None:
    """A numpy array's state ``(version, shape, dtype, fortran, data)``: numeric data of the size
    its shape and dtype declare (a 0-d object array holds no data to check)."""
    if inst.built or not isinstance(state, tuple) or len(state) != 5:
        raise Refused("a numpy array with an odd state")
    dims = _shape(state[1], "an array's shape")
    if not isinstance(state[2], _DType):
        raise Refused("a numpy array without a checked dtype")
    dtype, numel = state[2].dtype, math.prod(dims)
    if dtype.kind == "O" and dims:
        raise Refused("a numpy object array (only data arrays are read)")
    raw = state[4]
    if dtype.kind != "O" and not (isinstance(raw, (bytes, str, _Other))):
        raise Refused("a numpy array whose data is not bytes")
    if isinstance(raw, (bytes, str)) and len(raw) != numel * dtype.itemsize:
        raise Refused("a numpy array whose data does not match its shape")
    inst.nbytes, inst.built = numel * dtype.itemsize, True


# ------------------------------------------------------------------------------ loaded objects
def check_tree(obj, max_depth: int, max_nodes: int, max_bytes: int) -> None:
    """Raise :class:`Refused` when ``obj`` nests deeper than ``max_depth``, or holds more than
    ``max_nodes`` nodes or ``max_bytes`` bytes of arrays and tensors, counting a shared
    sub-object every time it is reached; numpy arrays of objects are refused wherever they are."""
    nodes, nbytes = max_nodes, max_bytes
    todo = [(obj, 0)]
    while todo:
        value, depth = todo.pop()
        nodes -= 1
        if nodes < 0:
            raise Refused(f"more than {max_nodes} entries (a shared one counts each time)")
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            if depth >= max_depth:
                raise Refused(f"containers nested more than {max_depth} deep")
            if len(value) > nodes:
                raise Refused(f"more than {max_nodes} entries (a shared one counts each time)")
            if isinstance(value, dict):
                todo.extend((v, depth + 1) for item in value.items() for v in item)
            else:
                todo.extend((v, depth + 1) for v in value)
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise Refused("a numpy object array (only data arrays are read)")
            nbytes -= value.nbytes
        elif hasattr(value, "element_size") and hasattr(value, "numel"):   # a tensor
            nbytes -= value.numel() * value.element_size()
        if nbytes < 0:
            raise Refused(f"arrays and tensors of more than {max_bytes} bytes (a shared one counts "
                          "each time)")
