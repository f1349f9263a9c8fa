"""The layouts a dataset can be written in besides our own (`--layout`).

clip-retrieval's (`clip-retrieval inference` writes it, LAION publishes it, its `index` and
`clip_back` and embedding-reader's `parquet_npy` read it):

    DIR/img_emb/img_emb_00000.npy        [rows, dim] image embeddings (image and --pairs datasets)
    DIR/text_emb/text_emb_00000.npy      [rows, dim] text embeddings (text and --pairs datasets)
    DIR/metadata/metadata_00000.parquet  row r of the npy files: `image_path` (images: the id),
                                         `caption`, and the metadata columns kept
    DIR/.clipexport-dataset/             the dataset in our own layout, behind it: what a rerun
                                         resumes and --append grows (no reader of the layout looks in it)

File n holds shard n's rows (shards whose inputs were all skipped have no files), so every reader
pairs `img_emb_n`, `text_emb_n` and `metadata_n` by their sorted names. After a run the three
folders hold exactly the dataset's shards: files of shards that are gone are removed.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np

from clipexport.bulk.dataset import BEHIND  # the dataset behind another layout
from clipexport.errors import InputError


class Layout(str, Enum):
    OURS = "clipexport"  # part-*.parquet, each shard saying what made it
    CLIP_RETRIEVAL = "clip-retrieval"


EMBEDDING_FOLDERS = {"image": "img_emb", "text": "text_emb"}
METADATA_FOLDER = "metadata"


def dataset_folder(output: Path, layout: Layout) -> Path:
    """Where the job's own dataset goes for `output` written in `layout`."""
    return output if layout is Layout.OURS else output / BEHIND


def check_folder(output: Path) -> None:
    """The owned-folder rule for a clip-retrieval folder: new, empty, or ours (its three folders
    and the dataset behind them); anything else is refused, naming it."""
    if not output.is_dir():
        return
    ours = {*EMBEDDING_FOLDERS.values(), METADATA_FOLDER, BEHIND}
    foreign = sorted(p.name for p in output.iterdir() if p.name not in ours and not p.name.startswith("."))
    if foreign:
        raise InputError(
            f"--output {output} holds other files ({foreign[0]}), not a clip-retrieval layout this command wrote; "
            "move them out, or choose a new or empty folder"
        )


def write_clip_retrieval(dataset: Path, output: Path, embeddings: bool = True) -> int:
    """The dataset at `dataset` in clip-retrieval's layout under `output`; the files written.
    `embeddings=False`: the metadata alone (what clip_back serves beside an index)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipexport.bulk.dataset import embedding_columns, embedding_rows, read_embeddings
    from clipexport.files import write_bytes_atomic

    data = read_embeddings(dataset, "the dataset")
    kind = data.manifest["kind"]
    columns = embedding_columns(kind)
    written: set[Path] = set()
    for entry in data.manifest["shards"]:
        if not entry["rows"]:
            continue
        table = data.read_shard(entry)
        number = entry["file"].removeprefix("part-").removesuffix(".parquet")
        for what, column in columns.items() if embeddings else ():
            values = embedding_rows(table, column)
            buffer = io.BytesIO()
            np.save(buffer, values)
            path = output / EMBEDDING_FOLDERS[what] / f"{EMBEDDING_FOLDERS[what]}_{number}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, buffer.getvalue())
            written.add(path)
        extra = [n for n in table.column_names if n != "id" and n not in columns.values()]
        first = {"image_path": table.column("id")} if "image" in columns else {"id": table.column("id")}
        metadata = pa.table({**first, **{n: table.column(n) for n in extra}})
        buffer = io.BytesIO()
        pq.write_table(metadata, buffer, compression="zstd")
        path = output / METADATA_FOLDER / f"{METADATA_FOLDER}_{number}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
        written.add(path)
    for folder in (*EMBEDDING_FOLDERS.values(), METADATA_FOLDER) if embeddings else (METADATA_FOLDER,):
        # files of shards that are gone
        for path in (output / folder).glob("*") if (output / folder).is_dir() else ():
            if path not in written and path.is_file() and not path.name.startswith("."):
                path.unlink()
    return len(written)


__all__ = ["BEHIND", "Layout", "check_folder", "dataset_folder", "write_clip_retrieval"]
