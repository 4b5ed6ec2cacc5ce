"""Raw load: stream a batch's JSON into raw tables that replicate the client's columns."""
