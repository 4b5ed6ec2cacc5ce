"""Raw load: stream a batch's JSON into raw tables that replicate the client's columns."""

from clientflow.load.raw import LoadResult, load_table

__all__ = ["LoadResult", "load_table"]
