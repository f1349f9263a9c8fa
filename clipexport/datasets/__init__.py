"""Every data set the tool reads, by purpose: what ships with the package (`shipped`: the default
calibration set and its held-out photos, the verification set), the user's own image folders and
text files (`files`), labelled folders and label lists (`labelled`), and retrieval sets
(`retrieval`). The names are re-exported here: `from clipexport import datasets` reads them all."""

from clipexport.datasets.files import (
    IMAGE_SUFFIXES,
    image_files,
    image_paths,
    is_folder,
    load_image_folder,
    load_text_file,
    read_lines,
)
from clipexport.datasets.labelled import (
    DEFAULT_TEMPLATES,
    TEMPLATES_FILE,
    LabelledSet,
    check_templates,
    collect_labels,
    load_labelled_folder,
)
from clipexport.datasets.retrieval import (
    CAPTIONS_FILE,
    DEMO_RETRIEVAL,
    RetrievalSet,
    load_retrieval_set,
    retrieval_set_dir,
)
from clipexport.datasets.shipped import (
    CALIBRATION_DIR_ENV,
    DEFAULT_CAPTIONS,
    DEFAULT_NUM_IMAGES,
    DEFAULT_SEED,
    default_calibration_dir,
    heldout_image_dir,
    synthetic_images,
)

__all__ = [
    "CALIBRATION_DIR_ENV",
    "CAPTIONS_FILE",
    "DEFAULT_CAPTIONS",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SEED",
    "DEFAULT_TEMPLATES",
    "DEMO_RETRIEVAL",
    "IMAGE_SUFFIXES",
    "TEMPLATES_FILE",
    "LabelledSet",
    "RetrievalSet",
    "check_templates",
    "collect_labels",
    "default_calibration_dir",
    "heldout_image_dir",
    "image_files",
    "image_paths",
    "is_folder",
    "load_image_folder",
    "load_labelled_folder",
    "load_retrieval_set",
    "load_text_file",
    "read_lines",
    "retrieval_set_dir",
    "synthetic_images",
]
