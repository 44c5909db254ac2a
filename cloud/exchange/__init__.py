"""The Models Exchange Interface: versioned FMUs in the seed's folder hierarchy
(test category / level / chemistry / model kind), with read and write access."""

from cloud.exchange.access import read_refusal, write_refusal
from cloud.exchange.schemas import (
    CategoryNode,
    FmuModelDetail,
    FmuModelSummary,
    UploadForm,
    file_name,
)
from cloud.exchange.store import (
    Folder,
    VersionConflictError,
    add_model,
    delete_model,
    folder_tree,
    get_model,
    list_models,
    read_content,
)

__all__ = [
    "CategoryNode",
    "FmuModelDetail",
    "FmuModelSummary",
    "Folder",
    "UploadForm",
    "VersionConflictError",
    "add_model",
    "delete_model",
    "file_name",
    "folder_tree",
    "get_model",
    "list_models",
    "read_content",
    "read_refusal",
    "write_refusal",
]
