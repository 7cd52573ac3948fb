"""Ray Data: a Dataset's text column embedded by a pool of actors, one Engine each (CONTRACT 6).

    import ray, bge_engine.ray as ber
    ds = ray.data.read_parquet("docs/")                      # an id and a text column
    ds = ber.embed_dataset(ds, column="text", num_actors=4, cpus_per_actor=2)
    ds.write_parquet("embeddings/")

The embedding column is a fixed-size list of `dim` float32, equal bit for bit to
Engine.encode of the row's text; every other column is kept. Needs the `ray` extra
(`pip install 'bge-engine[ray]'`); importing bge_engine does not import ray.
"""

from __future__ import annotations

import os
from typing import Optional

from .errors import InvalidInput
from .schema import check_text, show

__all__ = ["Embedder", "embed_dataset"]


def _model(model) -> str:
    from .hub import DEFAULT_MODEL

    return model or os.environ.get("BGE_ENGINE_MODEL") or DEFAULT_MODEL


class Embedder:
    """A callable class for `Dataset.map_batches`: Ray builds one per actor, and so one Engine
    per actor, whose threads are the CPUs Ray gave the actor (Ray sets OMP_NUM_THREADS to
    them, which Engine reads).

    Args:
        model: a model folder or hub id, as seen from the actor's node; None: the actor's
            BGE_ENGINE_MODEL, else BAAI/bge-small-en-v1.5.
        column: the text column.
        output_column: the embedding column appended to each batch.
        dtype, pooling, prompt_name: as Engine and Engine.encode.
        encode_batch_size: texts per forward pass (Engine.encode's batch_size).
        threads: the Engine's threads; None: OMP_NUM_THREADS, i.e. the actor's CPUs.

    A batch may come as a pyarrow.Table (batch_format="pyarrow", which embed_dataset uses),
    a pandas.DataFrame or a dict of 1-D numpy arrays; the result is a pyarrow.Table.
    """

    def __init__(self, model: Optional[str] = None, *, column: str = "text",
                 output_column: str = "embedding", dtype: str = "fp32",
                 pooling: Optional[str] = None, prompt_name: Optional[str] = None,
                 encode_batch_size: int = 32, threads: Optional[int] = None):
        from .engine import Engine

        self.column, self.output_column = column, output_column
        self._encode_kw = {"pooling": pooling, "batch_size": encode_batch_size}
        if prompt_name is not None:
            self._encode_kw["prompt_name"] = prompt_name
        self.engine = Engine(_model(model), dtype=dtype, threads=threads)

    def __call__(self, batch):
        """Returns `batch` as a pyarrow.Table with the embedding column appended.

        Raises:
            InvalidInput: no text column, an output column that exists already, or a text
                that is empty, null, not a string or not valid Unicode (naming the column,
                the row within the batch and the row's other values).
        """
        import pyarrow as pa

        from .corpus.arrow import embedding_array, embedding_type

        table = _as_table(batch)
        names = table.column_names
        if self.column not in names:
            raise InvalidInput(f"no column {self.column!r} in the dataset (columns: {names}); "
                               "name the text column with column=")
        if self.output_column in names:
            raise InvalidInput(f"the dataset already has a column {self.output_column!r}; "
                               "choose another output_column")
        texts = table.column(self.column).to_pylist()
        for i, text in enumerate(texts):
            if type(text) is not str or not text:
                self._refuse(table, i, text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                self._refuse(table, i, text)
        vectors = self.engine.encode(texts, **self._encode_kw)
        field = pa.field(self.output_column, embedding_type(self.engine.dim))
        return table.append_column(field, embedding_array(vectors))

    def _refuse(self, table, i: int, text) -> None:
        row = table.slice(i, 1).to_pylist()[0]
        others = ", ".join(f"{k}={show(v, 40)}" for k, v in list(row.items())[:4]
                           if k != self.column)
        where = (f"column {self.column!r}, row {i} of a batch of {table.num_rows}"
                 + (f" ({others})" if others else ""))
        if text is None:
            raise InvalidInput(f"{where}: null, expected a non-empty string")
        check_text(text, where)  # raises, naming what is wrong with it


def _as_table(batch):
    """A map_batches batch as a pyarrow.Table."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        try:
            return pa.table(batch)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
            raise InvalidInput(f"a batch of numpy columns Arrow cannot hold ({exc}); use "
                               "map_batches(..., batch_format='pyarrow')") from None
    if type(batch).__module__.startswith("pandas"):
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise InvalidInput(f"expected a batch as a pyarrow.Table, a pandas.DataFrame or a dict of "
                       f"numpy arrays, got {type(batch).__name__}")


def _warn_if_pool_fills_cluster(ray, cpus: int) -> None:
    """A fixed pool that takes every CPU leaves none for Ray Data's read tasks (read_parquet
    lists its files in a 1-CPU task), which then wait for ever: warn where that is known."""
    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    if total and cpus >= total:
        import logging

        logging.getLogger("bge_engine").warning(
            "embed_dataset: the actor pool takes %d of the cluster's %g CPUs; a read or write "
            "task of the same dataset (read_parquet, write_parquet) will wait for a CPU for "
            "ever. Leave one free, pass num_actors=None, or read into memory first "
            "(docs/corpus.md)", cpus, total)


def embed_dataset(ds, *, column: str = "text", output_column: str = "embedding",
                  model: Optional[str] = None, dtype: str = "fp32",
                  pooling: Optional[str] = None, prompt_name: Optional[str] = None,
                  num_actors: Optional[int] = None, cpus_per_actor: int = 1,
                  batch_size: int = 256, encode_batch_size: int = 32):
    """`ds` with an embedding column, computed by a pool of Embedder actors.

    Args:
        ds: a ray.data.Dataset with a text column.
        column, output_column, dtype, pooling, prompt_name, encode_batch_size: as Embedder.
        model: a model folder or hub id that every node can load (the same path on each
            node, or a hub id in each node's Hugging Face cache); None: BGE_ENGINE_MODEL as
            set where this is called, else BAAI/bge-small-en-v1.5.
        num_actors: actors in the pool (one Engine each); None: an autoscaling pool, from one
            actor up to as many as the cluster's CPUs hold. A fixed pool should leave a CPU
            free for Ray Data's read and write tasks (logged as a warning where it does not).
        cpus_per_actor: the CPUs Ray reserves for each actor, and its Engine's threads.
        batch_size: rows per map_batches call.

    Returns:
        A lazy ray.data.Dataset: every column of `ds` plus `output_column`, a fixed-size list
        of `dim` float32 (rows in no particular order: join on an id column).
    """
    import ray

    for name, value in (("cpus_per_actor", cpus_per_actor), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput(f"{name}: expected a positive int, got {show(value)}")
    if num_actors is None:
        compute = ray.data.ActorPoolStrategy(min_size=1)
    elif not isinstance(num_actors, int) or isinstance(num_actors, bool) or num_actors < 1:
        raise InvalidInput(f"num_actors: expected a positive int or None, got {show(num_actors)}")
    else:
        compute = ray.data.ActorPoolStrategy(size=num_actors)
        _warn_if_pool_fills_cluster(ray, num_actors * cpus_per_actor)
    kwargs = {"model": _model(model), "column": column, "output_column": output_column,
              "dtype": dtype, "pooling": pooling, "prompt_name": prompt_name,
              "encode_batch_size": encode_batch_size}
    return ds.map_batches(Embedder, fn_constructor_kwargs=kwargs, compute=compute,
                          num_cpus=cpus_per_actor, batch_size=batch_size,
                          batch_format="pyarrow")
