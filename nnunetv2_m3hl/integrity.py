"""Is a scan file whole? Readers do not always say: SimpleITK reads a ``.nii.gz`` cut after its header as an
array of the header's shape, mostly zeros. This module checks what a reader may skip, cheaply: a compressed
file must decompress to its end-of-stream marker (with its checksum), and the voxel data must be as long as
the header says.

Formats checked: NIfTI-1/2 (``.nii``, ``.nii.gz``), NRRD (``.nrrd`` with raw or gzip data in the file),
MetaImage (``.mha`` with the data in the file, raw or compressed) and any other ``.gz`` file (stream
complete). Other formats (PNG, TIFF, ...) are left to their readers, which fail on truncation themselves.
"""
import gzip
import os
import struct
import zlib
from typing import BinaryIO, Iterator, List, Optional, Tuple

import numpy as np

_CHUNK = 1 << 20


class IncompleteScanError(ValueError):
    """A scan file that is truncated or damaged; the message names the file."""


def _gzip_chunks(path: str) -> Iterator[bytes]:
    """The decompressed content in chunks; raises when the stream ends early or its checksum fails."""
    try:
        with gzip.open(path, 'rb') as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return
                yield chunk
    except (EOFError, OSError, zlib.error) as e:
        raise IncompleteScanError(f"{path}: the compressed data is incomplete or damaged ({e}). The file was cut "
                                  f"short (an interrupted copy or download?): copy it again from its source.") from e


def _plain_chunks(path: str) -> Iterator[bytes]:
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return
            yield chunk


class _Stream:
    """Reads a header from the front of a chunk iterator, then counts the remaining bytes."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buffer = chunks, b''

    def head(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        return self._buffer[:n]

    def total_length(self) -> int:
        return len(self._buffer) + sum(len(c) for c in self._chunks)


def _short(path: str, have: int, need: int, what: str) -> IncompleteScanError:
    return IncompleteScanError(f"{path}: {what} needs {need} bytes but the file holds {have}: it was cut short (an "
                               f"interrupted copy or download?). Copy it again from its source.")


def _check_nifti(path: str, stream: _Stream) -> None:
    header = stream.head(540)
    if len(header) < 4:
        raise _short(path, len(header), 348, 'a NIfTI header')
    for endian in '<>':
        sizeof_hdr = struct.unpack(endian + 'i', header[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise IncompleteScanError(f"{path}: not a NIfTI file (header size field {header[:4]!r}). Replace the file.")
    if len(header) < sizeof_hdr:
        raise _short(path, stream.total_length(), sizeof_hdr, 'the NIfTI header')
    if sizeof_hdr == 348:
        dims = struct.unpack(endian + '8h', header[40:56])
        bitpix = struct.unpack(endian + 'h', header[72:74])[0]
        vox_offset = struct.unpack(endian + 'f', header[108:112])[0]
    else:
        bitpix = struct.unpack(endian + 'h', header[14:16])[0]
        dims = struct.unpack(endian + '8q', header[16:80])
        vox_offset = struct.unpack(endian + 'q', header[168:176])[0]
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or any(d < 0 for d in dims[1:n_dims + 1]) or bitpix <= 0:
        raise IncompleteScanError(f"{path}: damaged NIfTI header (dims {dims}, bitpix {bitpix}). Replace the file.")
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:n_dims + 1]], dtype=np.int64))
    need = int(max(vox_offset, sizeof_hdr)) + voxels * bitpix // 8
    have = stream.total_length()
    if have < need:
        raise _short(path, have, need, f'the NIfTI image of {dims[1:n_dims + 1]} voxels x {bitpix} bits')


_NRRD_TYPE_BYTES = {
    **dict.fromkeys(('signed char', 'int8', 'int8_t', 'uchar', 'unsigned char', 'uint8', 'uint8_t'), 1),
    **dict.fromkeys(('short', 'short int', 'signed short', 'signed short int', 'int16', 'int16_t', 'ushort',
                     'unsigned short', 'unsigned short int', 'uint16', 'uint16_t'), 2),
    **dict.fromkeys(('int', 'signed int', 'int32', 'int32_t', 'uint', 'unsigned int', 'uint32', 'uint32_t',
                     'float'), 4),
    **dict.fromkeys(('longlong', 'long long', 'long long int', 'signed long long', 'signed long long int', 'int64',
                     'int64_t', 'ulonglong', 'unsigned long long', 'unsigned long long int', 'uint64', 'uint64_t',
                     'double'), 8),
}


def _text_header(f: BinaryIO, end: bytes, limit: int = 1 << 16) -> Optional[bytes]:
    head = f.read(limit)
    position = head.find(end)
    if position < 0:
        return None
    f.seek(position + len(end))
    return head[:position]


def _remaining_length(path: str, f: BinaryIO, compressed: bool) -> int:
    if not compressed:
        return os.fstat(f.fileno()).st_size - f.tell()
    decompressor, total = zlib.decompressobj(zlib.MAX_WBITS | 32), 0  # gzip or zlib
    try:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            total += len(decompressor.decompress(chunk))
        total += len(decompressor.flush())
    except zlib.error as e:
        raise IncompleteScanError(f"{path}: the compressed voxel data is damaged ({e}). Copy the file again.") from e
    if not decompressor.eof:
        raise IncompleteScanError(f"{path}: the compressed voxel data ends before its end-of-stream marker: the file "
                                  f"was cut short. Copy it again from its source.")
    return total


def _check_nrrd(path: str) -> None:
    with open(path, 'rb') as f:
        header = _text_header(f, b'\n\n')
        if header is None:
            raise IncompleteScanError(f"{path}: no complete NRRD header (no blank line ends it). Copy the file again.")
        fields = {}
        for line in header.decode('latin-1').splitlines()[1:]:
            if ':' in line and not line.startswith('#'):
                key, value = line.split(':', 1)
                fields[key.strip().lower()] = value.lstrip('=').strip()
        if 'data file' in fields or 'datafile' in fields:
            return  # detached data: the data file is read (and fails) on its own
        encoding = fields.get('encoding', 'raw').lower()
        if encoding not in ('raw', 'gzip', 'gz'):
            return
        sizes = [int(s) for s in fields.get('sizes', '').split()]
        item = _NRRD_TYPE_BYTES.get(fields.get('type', '').lower())
        if not sizes or item is None:
            raise IncompleteScanError(f"{path}: NRRD header without valid 'sizes'/'type'. Replace the file.")
        need = int(np.prod(sizes, dtype=np.int64)) * item
        have = _remaining_length(path, f, encoding != 'raw')
        if have < need:
            raise _short(path, have, need, f'the NRRD data of sizes {sizes} ({item} bytes each)')


_MHA_TYPE_BYTES = {'MET_CHAR': 1, 'MET_UCHAR': 1, 'MET_SHORT': 2, 'MET_USHORT': 2, 'MET_INT': 4, 'MET_UINT': 4,
                   'MET_LONG': 4, 'MET_ULONG': 4, 'MET_LONG_LONG': 8, 'MET_ULONG_LONG': 8, 'MET_FLOAT': 4,
                   'MET_DOUBLE': 8}


def _check_mha(path: str) -> None:
    with open(path, 'rb') as f:
        head = f.read(1 << 16)
        marker = head.find(b'ElementDataFile')
        line_end = head.find(b'\n', marker)
        if marker < 0 or line_end < 0:
            raise IncompleteScanError(f"{path}: no complete MetaImage header (no ElementDataFile line). Copy the "
                                      f"file again.")
        fields = {}
        for line in head[:line_end].decode('latin-1').splitlines():
            if '=' in line:
                key, value = line.split('=', 1)
                fields[key.strip()] = value.strip()
        if fields.get('ElementDataFile', '').upper() != 'LOCAL':
            return
        f.seek(line_end + 1)
        dims = [int(s) for s in fields.get('DimSize', '').split()]
        item = _MHA_TYPE_BYTES.get(fields.get('ElementType', ''))
        if not dims or item is None:
            raise IncompleteScanError(f"{path}: MetaImage header without valid DimSize/ElementType. Replace the file.")
        channels = int(fields.get('ElementNumberOfChannels', 1))
        need = int(np.prod(dims, dtype=np.int64)) * item * channels
        compressed = fields.get('CompressedData', 'False').lower() == 'true'
        have = _remaining_length(path, f, compressed)
        if have < need:
            raise _short(path, have, need, f'the MetaImage data of DimSize {dims}')


def check_scan_complete(path: str) -> None:
    """Raise ``IncompleteScanError`` (naming ``path``) when the file is truncated or its compressed stream is
    damaged; return quietly for a whole file or a format this module leaves to its reader."""
    if not os.path.isfile(path):
        raise IncompleteScanError(f"{path} is missing.")
    if os.path.getsize(path) == 0:
        raise IncompleteScanError(f"{path} is empty (0 bytes). Copy it again from its source.")
    name = path.lower()
    if name.endswith('.nii.gz'):
        _check_nifti(path, _Stream(_gzip_chunks(path)))
    elif name.endswith('.nii'):
        _check_nifti(path, _Stream(_plain_chunks(path)))
    elif name.endswith('.nrrd'):
        _check_nrrd(path)
    elif name.endswith('.mha'):
        _check_mha(path)
    elif name.endswith('.gz'):
        for _ in _gzip_chunks(path):
            pass


DATASET_SUBFOLDERS = ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs')


def check_dataset_files(raw_dataset_folder: str, verbose: bool = True) -> Tuple[int, List[str]]:
    """Check every file of a raw nnU-Net dataset (all of ``DATASET_SUBFOLDERS`` that exist); returns the number
    of files checked and one message per incomplete file."""
    from tqdm import tqdm
    if not os.path.isdir(raw_dataset_folder):
        raise FileNotFoundError(f"{raw_dataset_folder} does not exist: pass a dataset of nnUNet_raw")
    files = [os.path.join(raw_dataset_folder, sub, name) for sub in DATASET_SUBFOLDERS
             if os.path.isdir(os.path.join(raw_dataset_folder, sub))
             for name in sorted(os.listdir(os.path.join(raw_dataset_folder, sub))) if not name.startswith('.')]
    problems = []
    for f in tqdm(files, desc='Checking scan files', disable=not verbose):
        try:
            check_scan_complete(f)
        except IncompleteScanError as e:
            problems.append(str(e))
    return len(files), problems
