"""bge_engine.ray (CONTRACT.md 6): Embedder in map_batches on a local Ray cluster.

One cluster for the module (2 CPUs, no dashboard, no usage stats): a few hundred rows in six
blocks through a pool of 2 actors x 1 CPU; every vector equal to Engine.encode bit for bit
(joined on the id column: Ray keeps no order), the other columns kept, one Engine per actor,
the fixed-size list type through write_parquet -> read_parquet, and a bad text raising
InvalidInput naming the column and the row. Embedder alone is tested in-process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bge_engine import InvalidInput

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported
ray = pytest.importorskip("ray")  # the `ray` extra, which the `test` extra pulls in
import bge_engine.ray as ber  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SENTENCES = (REPO / "bench" / "sentences.txt").read_text(encoding="utf-8").splitlines()
ROWS = 240
BLOCKS = 6


def corpus() -> "pa.Table":
    """id, text and two more columns (a string and a list), ROWS rows."""
    ids = list(range(1000, 1000 + ROWS))
    return pa.table({
        "id": ids,
        "text": [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(ROWS)],
        "source": [f"doc-{i % 7}" for i in range(ROWS)],
        "tags": [[i % 3, i % 5] for i in range(ROWS)],
    })


def blocks(table) -> list:
    size = -(-table.num_rows // BLOCKS)
    return [table.slice(i, size) for i in range(0, table.num_rows, size)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def collect(ds) -> "pa.Table":
    """A Dataset's rows as one table, ordered by id."""
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    return table.sort_by("id")


class CountingEmbedder(ber.Embedder):
    """Embedder that leaves a file per construction (pid, the engine's id and threads) and
    one per call (pid, the engine it used) in `log`: how the test counts Engines per actor."""

    def __init__(self, *, log: str, **kw):
        super().__init__(**kw)
        self._log = log
        with open(os.path.join(log, f"init-{os.getpid()}-{id(self)}"), "w") as f:
            f.write(f"{id(self.engine)} {self.engine.threads}")

    def __call__(self, batch):
        with open(os.path.join(self._log, f"call-{os.getpid()}-{id(batch)}"), "w") as f:
            f.write(str(id(self.engine)))
        return super().__call__(batch)


def test_map_batches_one_engine_per_actor(cluster, tmp_path, synthetic_path, bge):
    """The contract's spelled-out form: map_batches(Embedder, ActorPoolStrategy(size=2),
    num_cpus=1), batches given as numpy (Ray's default format) and returned as Arrow."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    log = tmp_path / "log"
    log.mkdir()
    table = corpus()
    ds = ray.data.from_arrow(blocks(table))
    assert ds.num_blocks() == BLOCKS
    out = ds.map_batches(CountingEmbedder, fn_constructor_kwargs={
        "model": str(synthetic_path), "column": "text", "log": str(log)},
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=16)
    result = collect(out)
    assert result.column_names == ["id", "text", "source", "tags", "embedding"]
    assert result.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert result.drop_columns(["embedding"]).equals(table)  # every row, columns kept
    vectors = np.array(result.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(vectors, bge.encode(table.column("text").to_pylist()))

    inits = [p.name.split("-") for p in log.glob("init-*")]
    calls = [p.name.split("-") for p in log.glob("call-*")]
    pids = sorted(pid for _, pid, _ in inits)
    assert len(pids) == 2 and len(set(pids)) == 2  # two actors, one Embedder each
    engines = {pid: (log / f"init-{pid}-{obj}").read_text().split()
               for _, pid, obj in inits}
    assert all(threads == "1" for _, threads in engines.values())  # the actor's one CPU
    for _, pid, obj in calls:  # every call on its actor's one Engine
        assert (log / f"call-{pid}-{obj}").read_text() == engines[pid][0]
    assert {pid for _, pid, _ in calls} == set(pids)  # both actors worked
    assert len(calls) >= ROWS // 16


def test_embed_dataset_parquet_round_trip(cluster, tmp_path, synthetic_path, bge):
    """embed_dataset -> write_parquet -> read_parquet keeps the rows, the columns and the
    fixed-size list type; mean pooling and another output column pass through."""
    table = corpus()
    ds = ber.embed_dataset(ray.data.from_arrow(blocks(table)), column="text",
                           output_column="vec", model=str(synthetic_path), pooling="mean",
                           num_actors=2, cpus_per_actor=1, batch_size=32)
    # Materialised first: the pool holds both CPUs until its last batch, and the write
    # tasks need one (docs/corpus.md: leave a CPU per node for reads and writes).
    ds.materialize().write_parquet(str(tmp_path / "out"))
    back = ray.data.read_parquet(str(tmp_path / "out"))
    assert back.schema().base_schema.field("vec").type == pa.list_(pa.float32(), 384)
    files = pq.read_table(str(tmp_path / "out"))
    assert files.schema.field("vec").type == pa.list_(pa.float32(), 384)
    result = files.sort_by("id")
    assert result.drop_columns(["vec"]).equals(table)
    vectors = np.array(result.column("vec").to_pylist(), dtype=np.float32)
    assert np.array_equal(vectors, bge.encode(table.column("text").to_pylist(), pooling="mean"))


def test_bad_text_names_column_and_row(cluster, synthetic_path):
    """Ray reports the UDF's error inside its own (UserCodeException, whose text carries ours);
    with DataContext.raise_original_map_exception it raises an InvalidInput itself."""
    table = pa.table({"id": [7, 8, 9], "text": ["fine", "", "also fine"]})
    ds = ber.embed_dataset(ray.data.from_arrow([table]), model=str(synthetic_path),
                           num_actors=1, batch_size=8)
    expected = ("InvalidInput: column 'text', row 1 of a batch of 3 (id=8): expected a "
                "non-empty string")
    with pytest.raises(Exception) as info:
        ds.materialize()
    assert expected in str(info.value)
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True  # a Dataset takes the context it is made in
    try:
        ds = ber.embed_dataset(ray.data.from_arrow([table]), model=str(synthetic_path),
                               num_actors=1, batch_size=8)
        with pytest.raises(InvalidInput, match=r"column 'text', row 1 of a batch of 3 \(id=8\)"):
            ds.materialize()
    finally:
        ctx.raise_original_map_exception = False


# -- Embedder alone, in this process -----------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(synthetic_path):
    return ber.Embedder(str(synthetic_path), column="body", encode_batch_size=5)


def test_embedder_batch_formats(embedder, bge):
    import pandas as pd

    texts = SENTENCES[:9]
    expected = bge.encode(texts)
    for batch in (pa.table({"n": list(range(9)), "body": texts}),
                  pd.DataFrame({"n": list(range(9)), "body": texts}),
                  {"n": np.arange(9), "body": np.array(texts, dtype=object)}):
        out = embedder(batch)
        assert out.column_names == ["n", "body", "embedding"]
        assert out.column("n").to_pylist() == list(range(9))
        assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
        assert np.array_equal(np.array(out.column("embedding").to_pylist(), np.float32),
                              expected)


def test_embedder_refusals(embedder):
    with pytest.raises(InvalidInput, match=r"no column 'body' .*\['text'\]"):
        embedder(pa.table({"text": ["a"]}))
    with pytest.raises(InvalidInput, match="already has a column 'embedding'"):
        embedder(pa.table({"body": ["a"], "embedding": [1]}))
    for body, what in ((["ok", None], "null"), (["ok", ""], "non-empty"),
                       ([1, 2], "expected a string, got int")):
        row = body.index(None) if None in body else (body.index("") if "" in body else 0)
        k = ["x", "y"][row]
        with pytest.raises(InvalidInput, match=f"^column 'body', row {row} of a batch of 2 "
                                               f"\\(k='{k}'\\): .*{what}"):
            embedder(pa.table({"k": ["x", "y"], "body": body}))
    # A lone surrogate cannot even become an Arrow string: refused as the batch is read.
    with pytest.raises(InvalidInput, match="batch_format='pyarrow'"):
        embedder({"body": np.array(["ok", "\ud800"], dtype=object)})


def test_embed_dataset_refuses_bad_options(synthetic_path):
    ds = object()  # refused before the dataset is touched
    for kw in ({"num_actors": 0}, {"cpus_per_actor": 0}, {"batch_size": -1},
               {"num_actors": 1.5}):
        with pytest.raises(InvalidInput, match=next(iter(kw))):
            ber.embed_dataset(ds, model=str(synthetic_path), **kw)


def test_import_does_not_load_ray():
    import subprocess

    code = "import sys, bge_engine, bge_engine.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
