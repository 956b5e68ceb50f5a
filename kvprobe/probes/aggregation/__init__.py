"""Aggregation: the most frequent words of a tally spread over the document (RULER cwe/fwe)."""
