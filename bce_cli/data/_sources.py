"""Arrow-backed table sources (Parquet files and datasets, Arrow IPC / Feather, CSV, an
in-memory table): open one, check its schema, and yield record batches of chosen columns
as ``(batch, file, row_in_file)``, every Arrow/OS error met while reading turned into a
BCEInputError naming the file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from bce_cli.errors import BCEInputError, printable

from ._paths import Resolved

_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)


def check_names(schema: pa.Schema, file, hint=None) -> pa.Schema:
    """Refuse column names that are not UTF-8 text, and a name used twice (columns
    are chosen by name); return ``schema``."""
    try:
        names = schema.names
    except UnicodeDecodeError as exc:
        raise BCEInputError(f"a column name is not valid UTF-8 text ({exc.reason} at byte "
                            f"{exc.start} of the name)", file=file, hint=hint) from None
    if len(set(names)) != len(names):
        first = {}
        for i, n in enumerate(names):
            if n in first:
                raise BCEInputError(f"this name is used twice (columns {first[n]} and {i}); "
                                    "give each column its own name", file=file, column=n)
            first[n] = i
    return schema


# ---------------------------------------------------------------------------- sources
class TableSource:
    """Common part of the Arrow-backed sources."""

    fmt = "arrow"
    # Batches held in memory were validated when they were read (a join's tables, a
    # Feather v1 table from its child process): not again on every pass.
    validated = False

    def __init__(self, res: Resolved):
        self.res = res
        self.display = res.display
        self.schema: pa.Schema = None
        self.n_rows: int | None = None

    @property
    def file_names(self) -> list:
        return [self.res.show(f) for f in self.res.files]

    def _raw(self, columns, batch_rows):  # yields (RecordBatch, file_shown)
        raise NotImplementedError

    def _pieces(self, columns, batch_rows, start):
        """Yield ``(record_batch, file, row_in_file, global_row)`` from the piece that
        holds global row ``start`` on.  Sources that cannot seek read from the first
        row (and the caller skips); Parquet skips files and row groups."""
        current, row, first = None, 0, 0
        for rb, shown in self._raw(columns, read_rows(batch_rows, len(columns))):
            if shown != current:
                current, row = shown, 0
            yield rb, shown, row, first
            row += rb.num_rows
            first += rb.num_rows

    def batches(self, columns, batch_rows, rows=None):
        """Yield ``(record_batch, file, row_in_file)``; read errors name the file.
        ``rows``: only the global rows ``[start, stop)``."""
        start, stop = (0, None) if rows is None else rows
        current = self.file_names[0]
        it = self._pieces(list(columns), batch_rows, start)
        while True:
            try:
                rb, shown, row, first = next(it)
                if stop is not None and first >= stop:
                    return
                lo = max(start - first, 0)
                hi = rb.num_rows if stop is None else min(rb.num_rows, stop - first)
                if lo < hi:
                    # A corrupt file can hold offsets or lengths that point outside its
                    # buffers; using such a batch can crash the process.  A full
                    # validation of the selected columns catches that first.  For
                    # numeric columns it checks buffer sizes and null counts: 1.5 ms for
                    # 4M rows x 25 float32 columns of Parquet, 0.5% of the 0.3 s read.
                    if not self.validated:
                        rb.validate(full=True)
            except StopIteration:
                return
            except BCEInputError:
                raise
            except _READ_ERRORS as exc:
                raise BCEInputError(
                    f"cannot read (file corrupt or truncated?): {printable(exc)}", file=current
                ) from None
            current = shown
            if lo < hi:
                yield (rb if hi - lo == rb.num_rows else rb.slice(lo, hi - lo)), shown, row + lo


def read_rows(batch_rows, n_columns, budget=32 << 20):
    """Rows per record batch asked from the reader: at least ``batch_rows``, and up to
    256Ki rows while ~8 bytes x columns x rows stays within ``budget`` (fewer, larger
    reads decode faster; the feed slices them to ``batch_rows``)."""
    cap = max(1, budget // (8 * max(1, n_columns)))
    return max(int(batch_rows), min(1 << 18, cap))


def _open_error(exc, file):
    text = printable(exc)  # a parser's message may quote the file's bytes
    if "size is 0" in text or "empty" in text.lower():
        return BCEInputError(f"the file is empty or not a valid file: {text}", file=file)
    return BCEInputError(f"cannot read (file corrupt or truncated?): {text}", file=file)


class ParquetSource(TableSource):
    fmt = "parquet"

    def __init__(self, res: Resolved):
        super().__init__(res)
        total = 0
        first = None
        self._metadata = []  # each file's footer, read once
        for path in res.files:
            shown = res.show(path)
            try:
                with res.open_random(path) as f:
                    md = pq.ParquetFile(f).metadata
                    schema = md.schema.to_arrow_schema()
            except _READ_ERRORS as exc:
                raise _open_error(exc, shown) from None
            check_names(schema, shown)
            self._metadata.append(md)
            total += md.num_rows
            if first is None:
                first = (shown, schema)
                continue
            _check_same_schema(first, shown, schema)
        self.schema = first[1]
        self.n_rows = total

    def _pieces(self, columns, batch_rows, start):
        # pre_buffer=True (pyarrow's default) makes iter_batches buffer the whole
        # file: 600+ MB resident for a 600 MB file.  Instead, read one row group at
        # a time: whole (read_row_group: fastest, fewest buffers) when its selected
        # columns decode to at most ``GROUP_BUDGET`` bytes, else in record batches of
        # --batch-rows rows, with column chunks read in 1 MiB pieces (``buffer_size``;
        # without it pyarrow holds whole chunks: a 1M-row group of 25 float32 columns
        # peaked at 318 MB instead of 216 MB).  Pre-buffering (coalesced reads) only
        # for remote files, one group at a time.  Files and row groups that end at or
        # before global row ``start`` are skipped unread (their row counts are in the
        # metadata).
        local = self.res.local or self.res.buffer is not None
        wanted = set(columns)
        first = 0
        for path, file_md in zip(self.res.files, self._metadata, strict=True):
            n_rows = file_md.num_rows
            if first + n_rows <= start:
                first += n_rows
                continue
            shown = self.res.show(path)
            row = 0
            try:  # errors name the file being read (the reader's may not have started)
                with self.res.open_random(path) as f:
                    pf = pq.ParquetFile(f, metadata=file_md, pre_buffer=not local,
                                        buffer_size=1 << 20 if local else 0)
                    md = pf.metadata
                    for i in range(md.num_row_groups):
                        rg = md.row_group(i)
                        if first + row + rg.num_rows <= start:
                            row += rg.num_rows
                            continue
                        size = sum(
                            rg.column(j).total_uncompressed_size
                            for j in range(rg.num_columns)
                            if rg.column(j).path_in_schema.split(".")[0] in wanted
                        )
                        if size <= GROUP_BUDGET:
                            table = pf.read_row_group(i, columns=columns)
                            for rb in table.to_batches():
                                yield rb, shown, row, first + row
                                row += rb.num_rows
                            del table
                        else:
                            for rb in pf.iter_batches(
                                batch_size=batch_rows, columns=columns, row_groups=[i]
                            ):
                                yield rb, shown, row, first + row
                                row += rb.num_rows
            except BCEInputError:
                raise
            except _READ_ERRORS as exc:
                raise BCEInputError(f"cannot read (file corrupt or truncated?): "
                                    f"{printable(exc)}", file=shown) from None
            first += n_rows


GROUP_BUDGET = 64 << 20


def _check_same_schema(first, shown, schema):
    first_name, ref = first
    for field in ref:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            raise BCEInputError(
                f"this dataset file lacks column {field.name!r} that {first_name} has "
                "(a dataset's files must all have the same schema)",
                file=shown,
                column=field.name,
            )
        other = schema.field(idx).type
        if not other.equals(field.type):
            raise BCEInputError(
                f"type {other} differs from {field.type} in {first_name} "
                "(a dataset's files must all have the same schema; nothing is cast)",
                file=shown,
                column=field.name,
            )
    extra = [n for n in schema.names if ref.get_field_index(n) < 0]
    if extra:
        raise BCEInputError(
            f"this dataset file has columns {extra} that {first_name} lacks "
            "(a dataset's files must all have the same schema)",
            file=shown,
            column=extra[0],
        )


class IpcFileSource(TableSource):
    fmt = "ipc_file"

    def __init__(self, res: Resolved):
        super().__init__(res)
        path = res.files[0]
        try:
            with res.open_random(path) as f:
                reader = ipc.open_file(f)
                self.schema = reader.schema
                self.n_rows = reader.count_rows()  # reads message headers only
        except _READ_ERRORS as exc:
            raise _open_error(exc, self.file_names[0]) from None
        check_names(self.schema, self.file_names[0])

    def _raw(self, columns, batch_rows):
        shown = self.file_names[0]
        with self.res.open_random(self.res.files[0]) as f:
            reader = ipc.open_file(f)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i).select(columns), shown


class IpcStreamSource(TableSource):
    fmt = "ipc_stream"

    def __init__(self, res: Resolved):
        super().__init__(res)
        try:
            with res.open_stream(res.files[0]) as f:
                self.schema = ipc.open_stream(f).schema
        except _READ_ERRORS as exc:
            raise _open_error(exc, self.file_names[0]) from None
        check_names(self.schema, self.file_names[0])
        if res.buffer is not None or res.local:
            # cheap to count: the whole stream is in memory or memory-mappable
            # (memory-mapped, so only the message headers are touched)
            try:
                opener = (
                    pa.BufferReader(res.buffer)
                    if res.buffer is not None
                    else pa.memory_map(res.files[0], "r")
                )
                with opener as f:
                    self.n_rows = sum(b.num_rows for b in ipc.open_stream(f))
            except _READ_ERRORS as exc:
                raise _open_error(exc, self.file_names[0]) from None

    def _raw(self, columns, batch_rows):
        shown = self.file_names[0]
        with self.res.open_stream(self.res.files[0]) as f:
            for rb in ipc.open_stream(f):
                yield rb.select(columns), shown


class MemorySource(TableSource):
    """An in-memory table (joined inputs, Feather v1), validated when it was read
    (each batch of a join's inputs, and the Feather v1 table after its child)."""

    fmt = "memory"
    validated = True

    def __init__(self, res: Resolved, table: pa.Table, file_shown: str | None = None,
                 first_row: int = 0):
        super().__init__(res)
        self.table = table
        self.schema = check_names(table.schema, file_shown or res.display)
        self.first_row = first_row  # the global row of the table's first (a Dask task's rows)
        self.n_rows = first_row + table.num_rows
        self._shown = file_shown or res.display

    @property
    def file_names(self):
        return [self._shown]

    def _raw(self, columns, batch_rows):
        for rb in self.table.select(columns).to_batches(max_chunksize=batch_rows):
            yield rb, self._shown

    def _pieces(self, columns, batch_rows, start):
        row = self.first_row  # one "file": its rows are the global rows
        for rb, shown in self._raw(columns, batch_rows):
            yield rb, shown, row, row
            row += rb.num_rows


class CsvSource(TableSource):
    """CSV through pyarrow's streaming reader; the row count is unknown up front.

    Integer columns other than ``keep_types`` are read as float64: a streaming
    reader infers types from its first block, and a later ``0.5`` in an
    integer-looking column would otherwise fail half-way.
    """

    fmt = "csv"

    def __init__(self, res: Resolved, keep_types=()):
        super().__init__(res)
        self._parse = pacsv.ParseOptions(delimiter=res.delimiter)
        self._read = pacsv.ReadOptions(block_size=4 << 20)
        try:
            with res.open_stream(res.files[0]) as f:
                reader = pacsv.open_csv(f, read_options=self._read, parse_options=self._parse)
                schema = reader.schema
                first = None
                for rb in reader:
                    if rb.num_rows:
                        first = rb
                        break
        except _READ_ERRORS as exc:
            raise _open_error(exc, self.file_names[0]) from None
        check_names(schema, self.file_names[0], hint="save the file as UTF-8 (e.g. iconv -f "
                    "latin1 -t utf-8 in.csv > out.csv)")
        if first is None:
            raise BCEInputError("the input has no rows", file=self.file_names[0])
        types = {}
        for field in schema:
            if pa.types.is_integer(field.type) and field.name not in keep_types:
                types[field.name] = pa.float64()
        self._types = types
        self.schema = pa.schema([pa.field(f.name, types.get(f.name, f.type)) for f in schema])

    def _raw(self, columns, batch_rows):
        shown = self.file_names[0]
        convert = pacsv.ConvertOptions(column_types=self._types, include_columns=columns)
        with self.res.open_stream(self.res.files[0]) as f:
            reader = pacsv.open_csv(
                f, read_options=self._read, parse_options=self._parse, convert_options=convert
            )
            for rb in reader:
                yield rb, shown


def open_table_source(res: Resolved, keep_types=()) -> TableSource:
    if res.fmt == "parquet":
        return ParquetSource(res)
    if res.fmt == "ipc_file":
        return IpcFileSource(res)
    if res.fmt == "ipc_stream":
        return IpcStreamSource(res)
    if res.fmt == "csv":
        return CsvSource(res, keep_types)
    if res.fmt == "feather_v1":
        from ._feather_v1 import read_feather_v1

        return MemorySource(res, read_feather_v1(res))
    raise AssertionError(res.fmt)
