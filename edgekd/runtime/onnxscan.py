"""External-data references of an ONNX model, found without ``onnx`` and without reading the file
into memory: the protobuf is walked by hand over a memory map (tensor payloads are skipped as
zero-copy slices). Every place a tensor can sit is covered: graph initializers and sparse
initializers, node attributes (tensor, tensors, sparse tensor(s), subgraphs, recursively),
model-local functions (their nodes' attributes) and training-info graphs."""
from __future__ import annotations

import mmap
import os
from typing import Any, Iterator

from edgekd.errors import BundleError

_MAX_DEPTH = 64  # nested subgraphs deeper than this are refused (protobuf's own default is 100)


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise BundleError("onnx model: truncated protobuf (varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise BundleError("onnx model: malformed protobuf varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field_number, wire_type, value) of one protobuf message; length-delimited values
    are memoryview slices (no copy)."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt in (1, 5):
            size = 8 if wt == 1 else 4
            if i + size > n:
                raise BundleError("onnx model: truncated protobuf (fixed-size field)")
            val, i = buf[i:i + size], i + size
        elif wt == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise BundleError("onnx model: truncated protobuf (length-delimited field)")
            val, i = buf[i:i + length], i + length
        else:
            raise BundleError(f"onnx model: unsupported protobuf wire type {wt}")
        yield field, wt, val


def _tensor(t: memoryview) -> list[str]:
    locs = []
    for f, wt, v in _fields(t):
        if f == 13 and wt == 2:  # TensorProto.external_data: StringStringEntryProto
            kv = {ff: bytes(vv) for ff, w2, vv in _fields(v) if w2 == 2}
            if kv.get(1, b"") == b"location":
                locs.append(kv.get(2, b"").decode("utf-8", errors="replace"))
    return locs


def _sparse(s: memoryview) -> list[str]:  # SparseTensorProto: values(1), indices(2)
    return [loc for f, wt, v in _fields(s) if wt == 2 and f in (1, 2) for loc in _tensor(v)]


def _node(node: memoryview, depth: int) -> list[str]:
    locs: list[str] = []
    for f, wt, v in _fields(node):
        if f != 5 or wt != 2:  # NodeProto.attribute
            continue
        for af, aw, av in _fields(v):
            if aw != 2:
                continue
            if af in (5, 10):  # AttributeProto.t, tensors
                locs += _tensor(av)
            elif af in (22, 23):  # sparse_tensor, sparse_tensors
                locs += _sparse(av)
            elif af in (6, 11):  # g, graphs
                locs += _graph(av, depth + 1)
    return locs


def _graph(graph: memoryview, depth: int = 0) -> list[str]:
    if depth > _MAX_DEPTH:
        raise BundleError(f"onnx model: subgraphs nested deeper than {_MAX_DEPTH}")
    locs: list[str] = []
    for f, wt, v in _fields(graph):
        if wt != 2:
            continue
        if f == 5:  # initializer
            locs += _tensor(v)
        elif f == 15:  # sparse_initializer
            locs += _sparse(v)
        elif f == 1:  # node
            locs += _node(v, depth)
    return locs


def _model(buf: memoryview) -> list[str]:
    locs: list[str] = []
    for f, wt, v in _fields(buf):
        if wt != 2:
            continue
        if f == 7:  # ModelProto.graph
            locs += _graph(v)
        elif f == 25:  # ModelProto.functions: FunctionProto.node (7)
            for ff, w2, vv in _fields(v):
                if ff == 7 and w2 == 2:
                    locs += _node(vv, 0)
        elif f == 20:  # ModelProto.training_info: initialization (1), algorithm (2)
            for ff, w2, vv in _fields(v):
                if ff in (1, 2) and w2 == 2:
                    locs += _graph(vv)
    return locs


def onnx_external_data_locations(model_path: str | os.PathLike) -> list[str]:
    """All ``location`` entries of external-data tensors anywhere in an ONNX model."""
    with open(model_path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise BundleError(f"onnx model {os.fspath(model_path)!r} is empty")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    try:
        return _model(view)
    finally:
        view.release()
        try:
            mm.close()
        except BufferError:  # a slice is still referenced somewhere: the map closes when collected
            pass
