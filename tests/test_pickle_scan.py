"""The pickle walk of utils/pickle_scan.py: one handler per group of opcodes, the rest refused.

The crafted files and their budgets are tests/test_untrusted.py's; here the walk's own structure.
"""
import pickle
import pickletools

import numpy as np
import pytest

from utils.errors import Refused
from utils.pickle_scan import CHECKPOINT_GLOBALS, LABEL_GLOBALS, _PickleScan, scan_labels, scan_pickle

# opcodes that import, call or fetch something the scan cannot see through
CODE_OPCODES = {"EXT1", "EXT2", "EXT4", "INST", "NEWOBJ_EX", "NEXT_BUFFER", "OBJ", "READONLY_BUFFER"}
# an argument genops can read for each: INST takes two lines, EXT* a few bytes, the others none
CODE_ARGS = {"INST": b"os\nsystem\n", "EXT1": b"\x01", "EXT2": b"\x01\x00", "EXT4": b"\x01\x00\x00\x00"}


def test_every_opcode_has_a_handler_except_stop_and_those_that_run_code():
    names = {op.name for op in pickletools.opcodes}
    assert set(_PickleScan.HANDLERS) <= names
    assert names - set(_PickleScan.HANDLERS) == CODE_OPCODES | {"STOP"}


@pytest.mark.parametrize("name", sorted(CODE_OPCODES))
def test_an_opcode_that_runs_code_is_refused_by_name(name):
    code = next(op.code for op in pickletools.opcodes if op.name == name).encode("latin-1")
    with pytest.raises(Refused, match=rf"^pickle opcode {name} \(it imports or calls code\)$"):
        scan_pickle(b"\x80\x04" + code + CODE_ARGS.get(name, b"") + b".", LABEL_GLOBALS, 1 << 20)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_passes_at_every_protocol(protocol):
    """Lists, dicts, tuples of every length, shared (memoised) values, constants, text and bytes
    go through the handlers of every protocol's opcodes without a refusal (protocols 0 to 2 write
    bytes as a call of ``_codecs.encode``, which a checkpoint's globals allow)."""
    shared = [1.5, "text"]
    data = {"a": [1, -2, 1 << 70, None, True, False], "t": (), "t1": (1,), "t2": (1, 2), "t3": (1, 2, 3),
            "t4": (1, 2, 3, 4), "shared": (shared, shared), "b": b"bytes" * 60, "s": "u" * 300}
    scan_pickle(pickle.dumps(data, protocol=protocol), CHECKPOINT_GLOBALS, 1 << 20)


def test_a_numpy_label_dict_passes_and_its_declared_bytes_count():
    labels = np.array({"2007_000032": np.zeros(20, dtype=np.float32)}, dtype=object)
    data = pickle.dumps(labels, protocol=4)
    scan_pickle(data, LABEL_GLOBALS, 1 << 20, allow_object_scalar=True)
    with pytest.raises(Refused, match="^arrays and tensors declaring more than 79 bytes$"):
        scan_pickle(data, LABEL_GLOBALS, 79, allow_object_scalar=True)


def test_an_allowed_global_without_a_checked_call_is_refused_when_called():
    """Protocol 4 pickles a bytearray as a call of ``builtins.bytearray``: allowing the name lets it
    onto the stack, but only the calls :meth:`_PickleScan.call` checks may run."""
    with pytest.raises(Refused, match=r"^a call of builtins\.bytearray$"):
        scan_pickle(pickle.dumps(bytearray(b"xy"), protocol=4), {"builtins.bytearray"}, 1 << 20)


def test_the_walk_state_starts_empty_for_every_scan():
    """Each :func:`scan_pickle` builds its own machine: a refused walk leaves nothing for the next."""
    with pytest.raises(Refused, match=r"^a malformed pickle \(ValueError\)$"):
        scan_pickle(pickle.dumps([1, 2], protocol=4)[:-1], LABEL_GLOBALS, 1 << 20)
    scan_pickle(pickle.dumps([1, 2], protocol=4), LABEL_GLOBALS, 1 << 20)


# the budgets datasets/lists.py gives the original's labels file: bytes, memo, one array, one size
LABEL_LIMITS = (1 << 20, 1 << 20, 1024 * 16, 2_000_000)


def _labels_pickle(vector, protocol=3) -> bytes:
    return pickle.dumps(np.array({"2007_000032": vector}, dtype=object), protocol=protocol)


def _tampered(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize("protocol", (3, 4))   # np.save writes 3; 5 pickles arrays by numpy's _frombuffer
def test_a_real_label_dict_passes_the_label_rules(protocol):
    for vector in (np.zeros(20, np.float32), np.ones(80, np.float64), np.ones(20, np.uint8)):
        scan_labels(_labels_pickle(vector, protocol), *LABEL_LIMITS)


NO_LABEL_VECTOR = {
    "a global of code": (pickle.dumps(np.array({"a": print}, dtype=object), protocol=3),
                         r"^builtins\.print is not allowed in a labels file$"),
    "a long vector": (_labels_pickle(np.zeros(5000, np.float64)), "more than a label vector"),
    "three dimensions": (_labels_pickle(np.zeros((1, 1, 1), np.float32)), "not a label vector"),
    "a huge empty size": (_labels_pickle(np.zeros((0, 3_000_000), np.float32)), "not a label vector"),
    "complex numbers": (_labels_pickle(np.zeros(2, np.complex64)), "numpy dtype 'c8'"),
    "a rebuild from more than an empty array": (
        _tampered(_labels_pickle(np.zeros(2, np.float32)), b"q\x01K\x00\x85", b"q\x01K\x00K\x05\x86"),
        "used for something other than an empty array"),
    "numbers flagged as objects": (   # the dtype state's last field: flags
        _tampered(_labels_pickle(np.zeros(2, np.float32)), b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00",
                  b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x01"), "changes its flags or size"),
    "text of another size": (   # the dtype state's elsize, alignment, flags
        _tampered(_labels_pickle(np.array([b"ab"])), b"NNNK\x02K\x01K\x00", b"NNNK\x09K\x01K\x00"),
        "changes its flags or size"),
}


@pytest.mark.parametrize("case", sorted(NO_LABEL_VECTOR))
def test_the_label_rules_refuse_an_array_that_is_no_label_vector(case):
    data, message = NO_LABEL_VECTOR[case]
    with pytest.raises(Refused, match=message):
        scan_labels(data, *LABEL_LIMITS)
