"""A client's mapping file (``include/mappings/<client>.yaml``): model, vocabulary and loading.

``model`` validates a file (pydantic, with a JSON Schema in ``include/mappings/mapping.schema.json``
that each file references, so editors complete and check it); ``vocabulary`` is the meaning of
each cleaning rule; ``resolve`` turns a mapping into the dbt vars the models read; ``loading``
reads files with errors that name the file, the line and the field.
"""

from clientflow.mapping.loading import (
    MAPPINGS_DIR,
    MappingError,
    MappingProblem,
    load_all,
    load_each,
    load_mapping,
    mapping_files,
    parse_mapping,
)
from clientflow.mapping.model import ClientMapping, ColumnRules, SourceTable

__all__ = ["MAPPINGS_DIR", "ClientMapping", "ColumnRules", "MappingError", "MappingProblem", "SourceTable",
           "load_all", "load_each", "load_mapping", "mapping_files", "parse_mapping"]
